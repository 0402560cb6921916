/**
 * A new embedded database (a fresh data folder, or in memory) starts from a cached
 * template of an initialised and migrated cluster instead of running initdb and the
 * migrations again; the template is a cache, never a risk.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PGlite, type PGliteOptions } from '@electric-sql/pglite';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { MIGRATIONS } from '../../src/db/migrations/index.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { openPgliteDataDir, pgliteTemplateFile } from '../../src/db/pglite-template.js';

const TEMPLATE_NAME = /^pglite-[\d.]+-[0-9a-f]{12}\.tar\.gz$/;

describe('PGlite template', () => {
  let root: string;
  const starts: { fromTemplate: boolean }[] = [];
  const create = (options: PGliteOptions) => {
    starts.push({ fromTemplate: options.loadDataDir !== undefined });
    return PGlite.create(options);
  };

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-template-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('the first new folder writes a migrated template; the next folder and an in-memory database start from it with every migration recorded', async () => {
    const templates = join(root, 'templates');
    const first = await openDatabase({ dataDir: join(root, 'a'), pgliteTemplateDir: templates });
    await grantCredits(first, 'tina', 7);
    await first.close();
    const names = readdirSync(templates);
    expect(names).toEqual([expect.stringMatching(TEMPLATE_NAME)]);
    const template = join(templates, names[0]!);
    expect(template).toBe(pgliteTemplateFile(templates, MIGRATIONS));

    // Straight from the template: already migrated, and none of the first folder's rows.
    for (const dataDir of [join(root, 'b'), undefined]) {
      starts.length = 0;
      const started = await openPgliteDataDir(create, dataDir, template, {});
      try {
        expect(started.initialised).toBe(false);
        const applied = await started.pglite.query<{ name: string }>('select name from kysely_migration order by name');
        expect(applied.rows.map((r) => r.name)).toEqual(Object.keys(MIGRATIONS).sort());
        expect((await started.pglite.query('select * from credit_accounts')).rows).toEqual([]);
      } finally {
        await started.pglite.close();
      }
      expect(starts).toEqual([{ fromTemplate: true }]);
    }

    // Through openDatabase, folder and memory: money works, and each holds its own data.
    for (const dataDir of [join(root, 'c'), undefined]) {
      const database = await openDatabase({ dataDir, pgliteTemplateDir: templates });
      try {
        expect(await getBalance(database, 'tina')).toEqual({ balance: 0, reserved: 0 });
        await grantCredits(database, 'tina', 3);
        expect(await getBalance(database, 'tina')).toEqual({ balance: 3, reserved: 0 });
      } finally {
        await database.close();
      }
    }
    const again = await openDatabase({ dataDir: join(root, 'a'), pgliteTemplateDir: templates });
    try {
      expect(await getBalance(again, 'tina')).toEqual({ balance: 7, reserved: 0 });
    } finally {
      await again.close();
    }
    expect(readdirSync(templates)).toEqual(names);
  });

  it('an in-memory database writes the template too; a migration list of its own never does, and another or an edited list is another template', async () => {
    const templates = join(root, 'memory-templates');
    const memory = await openDatabase({ pgliteTemplateDir: templates });
    await memory.close();
    expect(readdirSync(templates)).toEqual([expect.stringMatching(TEMPLATE_NAME)]);

    const own = join(root, 'own-templates');
    const custom = await openDatabase({ pgliteTemplateDir: own }, { migrations: { '0001_only': { up: async (db) => void (await sql`create table t (x int)`.execute(db)) } } });
    await custom.close();
    expect(existsSync(own)).toBe(false);

    const next = { ...MIGRATIONS, '9999_next': { up: async () => undefined } };
    expect(pgliteTemplateFile(templates, next)).not.toBe(pgliteTemplateFile(templates, MIGRATIONS));
    // An edited migration (same name, other code) is another template too.
    const edited = { ...MIGRATIONS, '0001_initial': { up: async () => undefined } };
    expect(pgliteTemplateFile(templates, edited)).not.toBe(pgliteTemplateFile(templates, MIGRATIONS));
  });

  it('a damaged template is dropped and the database starts plainly, then writes a good one; a folder that is not empty never gets it', async () => {
    const templates = join(root, 'bad-templates');
    const template = pgliteTemplateFile(templates, MIGRATIONS)!;
    mkdirSync(templates);
    writeFileSync(template, 'not a tarball');
    const database = await openDatabase({ dataDir: join(root, 'd'), pgliteTemplateDir: templates });
    try {
      await grantCredits(database, 'tina', 2);
      expect(await getBalance(database, 'tina')).toEqual({ balance: 2, reserved: 0 });
    } finally {
      await database.close();
    }
    // Replaced by a gzip dump of the plainly started, migrated cluster.
    expect([...readFileSync(template).subarray(0, 2)]).toEqual([0x1f, 0x8b]);

    const occupied = join(root, 'occupied');
    mkdirSync(occupied);
    writeFileSync(join(occupied, 'notes.txt'), 'mine');
    starts.length = 0;
    const other = await openPgliteDataDir(create, occupied, template, {});
    await other.pglite.close();
    expect(starts).toEqual([{ fromTemplate: false }]);
    expect(other.initialised).toBe(false);
    expect(existsSync(join(occupied, 'notes.txt'))).toBe(true);
  });
});
