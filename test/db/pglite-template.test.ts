/**
 * A new embedded database (a fresh data folder, or in memory) starts from a cached
 * template of an initialised and migrated cluster instead of running initdb and the
 * migrations again; the template is a cache, never a risk.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';
import { PGlite, type PGliteOptions } from '@electric-sql/pglite';
import { sql } from 'kysely';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { MIGRATIONS } from '../../src/db/migrations/index.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { extractPgliteTemplate, openPgliteDataDir, pgliteTemplateFile, pgliteTemplates } from '../../src/db/pglite-template.js';
import { cliEntry, REPO_ROOT } from '../support/cli.js';
import { TEST_PGLITE_TEMPLATE_DIR } from '../support/databases.js';

const TEMPLATE_NAME = /^pglite-[\d.]+-[0-9a-f]{12}\.tar\.gz$/;

describe('PGlite template', () => {
  let root: string;
  // How PGlite was asked to start: from a tarball in memory (`loadDataDir`), or on a folder that already holds a cluster.
  const starts: { loadDataDir: boolean; cluster: boolean }[] = [];
  const create = (options: PGliteOptions) => {
    starts.push({ loadDataDir: options.loadDataDir !== undefined, cluster: options.dataDir !== undefined && existsSync(join(options.dataDir, 'PG_VERSION')) });
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

    // Straight from the template: already migrated, and none of the first folder's rows. A folder
    // gets it unpacked on disk and PGlite opens an existing cluster; memory gets it as a tarball.
    for (const dataDir of [join(root, 'b'), undefined]) {
      starts.length = 0;
      const started = await openPgliteDataDir(create, dataDir, [{ file: template, cache: true }], {});
      try {
        expect(started.initialised).toBe(false);
        expect(started.template).toBe(template);
        const applied = await started.pglite.query<{ name: string }>('select name from kysely_migration order by name');
        expect(applied.rows.map((r) => r.name)).toEqual(Object.keys(MIGRATIONS).sort());
        expect((await started.pglite.query('select * from credit_accounts')).rows).toEqual([]);
      } finally {
        await started.pglite.close();
      }
      expect(starts).toEqual([dataDir === undefined ? { loadDataDir: true, cluster: false } : { loadDataDir: false, cluster: true }]);
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
    const other = await openPgliteDataDir(create, occupied, [{ file: template, cache: true }], {});
    await other.pglite.close();
    expect(starts).toEqual([{ loadDataDir: false, cluster: false }]);
    expect(other.initialised).toBe(false);
    expect(other.template).toBeUndefined();
    expect(existsSync(join(occupied, 'notes.txt'))).toBe(true);
  });
});

describe('PGlite template shipped with the build', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-shipped-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('a new folder starts from the shipped template when the cache has none; a cached one comes first; a damaged shipped one is skipped, never deleted', async () => {
    // A good template keyed for these sources: the tests' shared cache (made by the first database that needed it).
    await (await openDatabase({ pgliteTemplateDir: TEST_PGLITE_TEMPLATE_DIR })).close();
    const good = pgliteTemplateFile(TEST_PGLITE_TEMPLATE_DIR, MIGRATIONS)!;
    const cacheDir = join(root, 'cache');
    const shippedDir = join(root, 'shipped');
    const [cached, shipped] = pgliteTemplates(cacheDir, MIGRATIONS, shippedDir);
    expect([cached, shipped]).toEqual([
      { file: pgliteTemplateFile(cacheDir, MIGRATIONS), cache: true },
      { file: pgliteTemplateFile(shippedDir, MIGRATIONS), cache: false },
    ]);
    mkdirSync(shippedDir);
    copyFileSync(good, shipped!.file);

    const fromShipped = await openPgliteDataDir((o) => PGlite.create(o), join(root, 'a'), [cached!, shipped!], {});
    try {
      expect(fromShipped).toMatchObject({ initialised: false, template: shipped!.file });
      const applied = await fromShipped.pglite.query<{ name: string }>('select name from kysely_migration order by name');
      expect(applied.rows.map((r) => r.name)).toEqual(Object.keys(MIGRATIONS).sort());
    } finally {
      await fromShipped.pglite.close();
    }
    expect(existsSync(cacheDir)).toBe(false);

    mkdirSync(cacheDir);
    copyFileSync(good, cached!.file);
    const fromCache = await openPgliteDataDir((o) => PGlite.create(o), join(root, 'b'), [cached!, shipped!], {});
    await fromCache.pglite.close();
    expect(fromCache.template).toBe(cached!.file);

    // Damaged: the cache's is deleted, the shipped one only skipped; the start goes on plainly (initdb).
    writeFileSync(cached!.file, 'not a tarball');
    writeFileSync(shipped!.file, gzipSync('not a tarball either'));
    const plain = await openPgliteDataDir((o) => PGlite.create(o), join(root, 'c'), [cached!, shipped!], {});
    await plain.pglite.close();
    expect(plain).toMatchObject({ initialised: true, template: undefined });
    expect(existsSync(cached!.file)).toBe(false);
    expect(readFileSync(shipped!.file)).toEqual(gzipSync('not a tarball either'));
    expect(readdirSync(join(root, 'c'))).toContain('PG_VERSION');
  });

  it('unpacking is all or nothing: a truncated or foreign tarball leaves the folder as it was; a crashed unpacking counts as empty', async () => {
    const good = pgliteTemplateFile(TEST_PGLITE_TEMPLATE_DIR, MIGRATIONS)!;
    const truncated = join(root, 'truncated.tar.gz');
    writeFileSync(truncated, gzipSync(gunzipped(good).subarray(0, 300_000)));
    const empty = join(root, 'empty');
    mkdirSync(empty);
    await expect(extractPgliteTemplate(truncated, empty)).rejects.toThrow(/truncated/);
    expect(readdirSync(empty)).toEqual([]);

    // A tarball of one file that is not a cluster.
    const header = Buffer.alloc(512);
    header.write('notes.txt', 0, 'latin1');
    header.write('0000644\0', 100, 'latin1');
    header.write('00000000004\0', 124, 'latin1');
    header.write('0', 156, 'latin1');
    header.write('ustar\u000000', 257, 'latin1');
    header.write('        ', 148, 'latin1');
    let sum = 0;
    for (const byte of header) sum += byte;
    header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
    const body = Buffer.alloc(512);
    body.write('mine');
    const foreign = join(root, 'foreign.tar.gz');
    writeFileSync(foreign, gzipSync(Buffer.concat([header, body, Buffer.alloc(1024)])));
    const missing = join(root, 'missing');
    await expect(extractPgliteTemplate(foreign, missing)).rejects.toThrow(/PG_VERSION/);
    expect(existsSync(missing)).toBe(false);

    // What a crash while unpacking leaves (only the unpacking folder) counts as empty: the next start unpacks again.
    const crashed = join(root, 'crashed');
    mkdirSync(join(crashed, '.template-unpacking-999999', 'base'), { recursive: true });
    const started = await openPgliteDataDir((o) => PGlite.create(o), crashed, [{ file: good, cache: false }], {});
    await started.pglite.close();
    expect(started).toMatchObject({ initialised: false, template: good });
    expect(readdirSync(crashed).filter((name) => name.startsWith('.template-'))).toEqual([]);
  });

  it('the build script writes the keyed template into <outDir>/pglite-template and the built CLI starts a new folder from it: no initdb, nothing written to the user cache; a template of another key is ignored', { timeout: 240_000 }, async () => {
    // A private copy of the build of these sources (inside node_modules/.cache so packages resolve).
    const build = join(await cliEntry(), '..');
    const outDir = join(REPO_ROOT, 'node_modules', '.cache', `imagegen-template-test-${process.pid}`);
    rmSync(outDir, { recursive: true, force: true });
    cpSync(build, outDir, { recursive: true });
    try {
      const templateDir = join(outDir, 'pglite-template');
      rmSync(templateDir, { recursive: true, force: true });
      mkdirSync(templateDir);
      const stale = join(templateDir, 'pglite-0.0.0-000000000000.tar.gz');
      writeFileSync(stale, 'an older build');
      const script = join(REPO_ROOT, 'scripts', 'build-pglite-template.mjs');
      const built = spawnSync(process.execPath, [script, outDir], { encoding: 'utf8' });
      expect(built.status, built.stderr).toBe(0);
      // Keyed by the compiled code, as the runtime of that build keys it.
      const compiled = (await import(pathToFileURL(join(outDir, 'db', 'pglite-template.js')).href)) as typeof import('../../src/db/pglite-template.js');
      const compiledMigrations = ((await import(pathToFileURL(join(outDir, 'db', 'migrations', 'index.js')).href)) as typeof import('../../src/db/migrations/index.js')).MIGRATIONS;
      const template = compiled.pgliteTemplateFile(templateDir, compiledMigrations)!;
      // The bundled CLI (scripts/bundle-cli.mjs) holds the migrations as the bundler reprinted them: its own key, the same file.
      const bundle = (await import(pathToFileURL(join(outDir, 'cli-bundle', 'template-key.js')).href)) as typeof import('../../src/db/pglite-template.js') & typeof import('../../src/db/migrations/index.js');
      const bundleTemplate = bundle.pgliteTemplateFile(templateDir, bundle.MIGRATIONS)!;
      expect(bundleTemplate).not.toBe(template);
      expect(readdirSync(templateDir).sort()).toEqual([template, bundleTemplate].map((file) => file.slice(templateDir.length + 1)).sort());
      expect([...readFileSync(template).subarray(0, 2)]).toEqual([0x1f, 0x8b]);
      expect(readFileSync(bundleTemplate).equals(readFileSync(template))).toBe(true);
      // A rebuild keeps a current template (no second initdb).
      const writtenAt = statSync(template).mtimeMs;
      expect(spawnSync(process.execPath, [script, outDir], { encoding: 'utf8' }).status).toBe(0);
      expect(statSync(template).mtimeMs).toBe(writtenAt);

      const cli = (args: string[], cacheHome: string, dataDir: string) =>
        spawnSync(process.execPath, [join(outDir, 'cli.js'), ...args], {
          encoding: 'utf8',
          env: { PATH: process.env['PATH'], HOME: root, XDG_CACHE_HOME: cacheHome, IMAGEGEN_DATA_DIR: dataDir, IMAGEGEN_LOG_LEVEL: 'silent' },
        });
      // A machine with an empty cache: a cluster made by initdb would be written to the cache; none is.
      const cacheHome = join(root, 'xdg');
      const dataDir = join(root, 'data');
      const grant = cli(['credits', 'grant', 'ana', '4'], cacheHome, dataDir);
      expect(grant.status, grant.stderr).toBe(0);
      expect(cli(['credits', 'balance', 'ana'], cacheHome, dataDir).stdout).toContain('ana: balance 4');
      expect(existsSync(join(cacheHome, 'imagegen-pipeline'))).toBe(false);
      expect(existsSync(join(dataDir, 'db', 'PG_VERSION'))).toBe(true);

      // The same file under another key (another PGlite build or migration list) is not this build's: initdb, then the cache.
      renameSync(bundleTemplate, join(templateDir, 'pglite-0.4.6-ffffffffffff.tar.gz'));
      const other = cli(['credits', 'grant', 'ana', '1'], join(root, 'xdg2'), join(root, 'data2'));
      expect(other.status, other.stderr).toBe(0);
      expect(readdirSync(join(root, 'xdg2', 'imagegen-pipeline'))).toEqual([bundleTemplate.slice(templateDir.length + 1)]);
    } finally {
      rmSync(outDir, { recursive: true, force: true });
    }
  });
});

function gunzipped(file: string): Buffer {
  return gunzipSync(readFileSync(file));
}
