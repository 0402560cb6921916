/**
 * A fresh embedded data folder starts from a cached template of an initialised
 * cluster instead of running initdb again; the template is a cache, never a risk.
 */
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PGlite, type PGliteOptions } from '@electric-sql/pglite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { openPgliteDataDir } from '../../src/db/pglite-template.js';

describe('PGlite data folder template', () => {
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

  it('the first fresh folder writes the template, the next one starts from it, and both hold working databases', async () => {
    const templates = join(root, 'templates');
    const first = await openPgliteDataDir(create, join(root, 'a'), templates, {});
    await first.close();
    expect(readdirSync(templates)).toEqual([expect.stringMatching(/^pglite-[\d.]+-[0-9a-f]{12}\.tar\.gz$/)]);
    const second = await openPgliteDataDir(create, join(root, 'b'), templates, {});
    expect((await second.query<{ n: number }>('select 1 as n')).rows).toEqual([{ n: 1 }]);
    await second.close();
    expect(starts).toEqual([{ fromTemplate: false }, { fromTemplate: true }]);

    // Through openDatabase: migrations run on the templated folder and money works.
    const database = await openDatabase({ dataDir: join(root, 'c'), pgliteTemplateDir: templates });
    try {
      await grantCredits(database, 'tina', 7);
      expect(await getBalance(database, 'tina')).toEqual({ balance: 7, reserved: 0 });
    } finally {
      await database.close();
    }
    // Reopened: the data is its own, not the template's.
    const again = await openDatabase({ dataDir: join(root, 'c'), pgliteTemplateDir: templates });
    try {
      expect(await getBalance(again, 'tina')).toEqual({ balance: 7, reserved: 0 });
    } finally {
      await again.close();
    }
  });

  it('a damaged template is dropped and the folder starts plainly; a folder that is not empty never gets it', async () => {
    const templates = join(root, 'bad-templates');
    const seed = await openPgliteDataDir(create, join(root, 'seed'), templates, {});
    await seed.close();
    const [name] = readdirSync(templates);
    writeFileSync(join(templates, name!), 'not a tarball');
    starts.length = 0;
    const pglite = await openPgliteDataDir(create, join(root, 'd'), templates, {});
    expect((await pglite.query<{ n: number }>('select 2 as n')).rows).toEqual([{ n: 2 }]);
    await pglite.close();
    expect(starts).toEqual([{ fromTemplate: true }, { fromTemplate: false }]);
    // Rebuilt from the plain start.
    expect(existsSync(join(templates, name!))).toBe(true);

    const occupied = join(root, 'occupied');
    mkdirSync(occupied);
    writeFileSync(join(occupied, 'notes.txt'), 'mine');
    starts.length = 0;
    const other = await openPgliteDataDir(create, occupied, templates, {});
    await other.close();
    expect(starts).toEqual([{ fromTemplate: false }]);
    expect(existsSync(join(occupied, 'notes.txt'))).toBe(true);
  });
});
