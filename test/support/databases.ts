/**
 * Runs one test suite on every database kind: PGlite always, PostgreSQL when
 * `DATABASE_URL` is set (otherwise that leg is skipped, visibly).
 *
 * Each suite gets a fresh database: an in-memory PGlite, or a uniquely named
 * PostgreSQL database created from `DATABASE_URL` and dropped afterwards (other
 * people run tests against the same server at the same time). Leaks fail the
 * suite: after `close()` no session may remain on the test database.
 *
 * ```ts
 * forEachDatabase('credits', (ctx) => {
 *   it('grants', async () => { await grantCredits(ctx.database, 'u1', 5); });
 * });
 * ```
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe } from 'vitest';
import { openDatabase, type Database, type DatabaseConfig, type OpenDatabaseOptions } from '../../src/db/database.js';

export type DatabaseKind = 'pglite' | 'postgres';
export const DATABASE_KINDS: readonly DatabaseKind[] = ['pglite', 'postgres'];

/**
 * Where in-process PGlite databases of the tests cache their template: the same folder a CLI
 * child uses by default (`$XDG_CACHE_HOME` or `~/.cache`, `/imagegen-pipeline`), so one
 * initdb serves the whole run. Without it every new PGlite database pays initdb and the
 * migrations (3.5-6 s each on a 2-core machine).
 */
export const TEST_PGLITE_TEMPLATE_DIR = join(process.env['XDG_CACHE_HOME'] || join(homedir(), '.cache'), 'imagegen-pipeline');

/** The server URL tests create their databases on, or undefined (PostgreSQL leg skipped). */
export const TEST_DATABASE_URL: string | undefined = process.env['DATABASE_URL'] || undefined;

/**
 * For a suite that runs once per kind of {@link DATABASE_KINDS}: whether this leg is the
 * PostgreSQL one with no server to run on (DATABASE_URL unset). Then it is registered as a
 * skipped suite whose name says why, the skip is said on stderr (as `warnAs`), and the caller
 * goes on to the next leg.
 *
 * @example
 *   for (const kind of DATABASE_KINDS) {
 *     const title = `the thing [${kind}]`;
 *     if (postgresLegSkipped(kind, title)) continue;
 *     describe(title, () => { ... });
 *   }
 */
export function postgresLegSkipped(kind: DatabaseKind, title: string, warnAs: string = title): boolean {
  if (kind !== 'postgres' || TEST_DATABASE_URL) return false;
  console.warn(`${warnAs}: PostgreSQL leg skipped: DATABASE_URL not set`);
  // Reason: skipped only without DATABASE_URL (no PostgreSQL to run on; the name and the warning say so); .ci/run sets it, so CI runs this leg.
  describe.skip(`${title} (PostgreSQL leg skipped: DATABASE_URL not set)`, () => {});
  return true;
}

/** A fresh, empty place to open a database: its config and how to remove it. */
export interface ScratchDatabase {
  readonly kind: DatabaseKind;
  readonly config: DatabaseConfig;
  /** Drops the PostgreSQL database (failing if sessions leaked) or removes the PGlite folder. */
  dispose(): Promise<void>;
}

/**
 * Creates an empty database of `kind`. PostgreSQL: `imagegen_t_<random>` on the
 * `DATABASE_URL` server. PGlite: `persistent` gives a temporary data folder (so
 * it can be opened twice), otherwise in-memory.
 */
export async function createScratchDatabase(kind: DatabaseKind, options: { persistent?: boolean } = {}): Promise<ScratchDatabase> {
  if (kind === 'pglite') {
    if (!options.persistent) return { kind, config: { pgliteTemplateDir: TEST_PGLITE_TEMPLATE_DIR }, dispose: async () => {} };
    const dataDir = await mkdtemp(join(tmpdir(), 'imagegen-pglite-'));
    return { kind, config: { dataDir, pgliteTemplateDir: TEST_PGLITE_TEMPLATE_DIR }, dispose: () => rm(dataDir, { recursive: true, force: true }) };
  }
  if (!TEST_DATABASE_URL) throw new Error('DATABASE_URL is not set');
  const name = `imagegen_t_${randomBytes(6).toString('hex')}`;
  await withAdmin((admin) => admin.query(`create database ${name}`));
  const url = new URL(TEST_DATABASE_URL);
  url.pathname = `/${name}`;
  return {
    kind,
    config: { databaseUrl: url.toString() },
    async dispose() {
      await withAdmin(async (admin) => {
        // A session that was just closed can take a moment to leave pg_stat_activity;
        // a real leak stays, so wait up to 3 s before calling it one.
        let leaked = 0;
        for (let waited = 0; waited <= 3000; waited += 100) {
          const { rows } = await admin.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where datname = $1', [name]);
          leaked = rows[0]?.n ?? 0;
          if (leaked === 0) break;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        await admin.query(`drop database if exists ${name} with (force)`);
        if (leaked > 0) throw new Error(`${leaked} connection(s) to ${name} were still open after close(): a leak`);
      });
    },
  };
}

async function withAdmin<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: TEST_DATABASE_URL });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** What a suite body gets; `database` is usable inside tests and hooks (after `beforeAll`). */
export interface DatabaseContext {
  readonly kind: DatabaseKind;
  /** The suite's open, migrated database. */
  readonly database: Database;
  /** Its config: open a second connection to the same database with it (PostgreSQL). */
  readonly config: DatabaseConfig;
}

/**
 * `fn` with a reader as another process has it: on PostgreSQL a second `Database` (its own
 * pool and LISTEN connection), closed after; on PGlite (one process) the suite's own.
 */
export async function withSecondConnection<T>(ctx: DatabaseContext, fn: (reader: Database) => Promise<T>): Promise<T> {
  if (ctx.kind === 'pglite') return fn(ctx.database);
  const reader = await openDatabase(ctx.config);
  try {
    return await fn(reader);
  } finally {
    await reader.close();
  }
}

/**
 * `describe(`${name} [${kind}]`)` once per kind, with a fresh database opened
 * before the suite and closed (and dropped) after it.
 */
export function forEachDatabase(
  name: string,
  body: (ctx: DatabaseContext) => void,
  options: { kinds?: readonly DatabaseKind[]; open?: OpenDatabaseOptions } = {},
): void {
  for (const kind of options.kinds ?? DATABASE_KINDS) {
    const title = `${name} [${kind}]`;
    if (kind === 'postgres' && !TEST_DATABASE_URL) {
      console.warn(`${title}: PostgreSQL leg skipped: DATABASE_URL not set`);
      // Reason: no PostgreSQL server configured (DATABASE_URL unset); the title and the warning say so.
      describe.skip(`${title} (PostgreSQL leg skipped: DATABASE_URL not set)`, () => body(unavailable(kind)));
      continue;
    }
    describe(title, () => {
      let scratch: ScratchDatabase | undefined;
      let database: Database | undefined;
      beforeAll(async () => {
        scratch = await createScratchDatabase(kind);
        database = await openDatabase(scratch.config, options.open);
      });
      afterAll(async () => {
        await database?.close();
        await scratch?.dispose();
      });
      body({
        kind,
        get database() {
          if (!database) throw new Error('database is opened in beforeAll; use it inside tests or hooks');
          return database;
        },
        get config() {
          if (!scratch) throw new Error('database is opened in beforeAll; use it inside tests or hooks');
          return scratch.config;
        },
      });
    });
  }
}

function unavailable(kind: DatabaseKind): DatabaseContext {
  const fail = (): never => {
    throw new Error('PostgreSQL leg skipped: DATABASE_URL not set');
  };
  return {
    kind,
    get database() {
      return fail();
    },
    get config() {
      return fail();
    },
  };
}
