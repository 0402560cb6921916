import { Kysely, PostgresDialect, sql, type PostgresPool } from 'kysely';
import { Migrator, type Migration } from 'kysely/migration';
import type pg from 'pg';
import { redactUrlPassword, withPrintedForm } from '../domain/hide-secrets.js';
import { MigrationError } from './errors.js';
import { MIGRATIONS } from './migrations/index.js';
import type { PGlite } from '@electric-sql/pglite';
import { openPgliteDataDir, pgliteTemplates, writePgliteTemplate, type DumpablePglite, type OpenedPglite, type PgliteTemplate } from './pglite-template.js';
import type { DatabaseSchema } from './schema.js';

/** Where the database lives. Frozen by {@link openDatabase}. */
export interface DatabaseConfig {
  /** PostgreSQL connection string; when set, PostgreSQL is used via `pg`. */
  readonly databaseUrl?: string | undefined;
  /** PGlite data folder (used when `databaseUrl` is not set); omitted = in-memory. */
  readonly dataDir?: string | undefined;
  /**
   * Where the template of a new PGlite database (folder or in memory) is cached (see `openPgliteDataDir`); when the
   * cache has none, the template shipped with the build (`dist/pglite-template`) is used. Omitted = no template at all.
   */
  readonly pgliteTemplateDir?: string | undefined;
  /** Largest `pg` pool size. Default 10. Ignored by PGlite (one connection). */
  readonly maxConnections?: number | undefined;
  /**
   * PostgreSQL only: run `pg`'s pool (the statements' socket writes and reads, the protocol,
   * the rows' parsing) in a thread of its own (`PgRemotePool`), so they do not take the main
   * thread's time. Default true; false runs it in the calling thread. LISTEN and migrations
   * use connections of the calling thread either way.
   */
  readonly pgThread?: boolean | undefined;
  /**
   * PGlite only: run it in a thread of its own (`PgliteRemote`), so its SQL and WASM do not
   * take the main thread's time (the event loop stays free for the provider's answers, the
   * images and the events). Default true; false runs it in the calling thread.
   */
  readonly pgliteThread?: boolean | undefined;
  /**
   * PGlite only: postgres's `shared_buffers` (a size postgres reads, e.g. `'4MB'`). Default
   * `'16MB'`. PGlite zeroes them inside its WASM memory at every start: the CLI gives a command
   * of a few queries 4 MB (BENCHMARKS.md 11D).
   */
  readonly pgliteSharedBuffers?: string | undefined;
}

/** Per-call options of {@link openDatabase}. */
export interface OpenDatabaseOptions {
  /** Migrations to run instead of the built-in ones (tests use this to inject a broken one). */
  readonly migrations?: Readonly<Record<string, Migration>>;
}

/** An open database: a typed Kysely instance plus LISTEN/NOTIFY. */
export interface Database {
  readonly db: Kysely<DatabaseSchema>;
  readonly kind: 'pglite' | 'postgres';
  /** `pg_notify(channel, payload)`; delivered to listeners when it commits. */
  notify(channel: string, payload: string): Promise<void>;
  /**
   * Calls `onPayload` for every notification on `channel` until the returned
   * function is called. PostgreSQL: one dedicated `pg` client per call (LISTEN
   * holds its connection), ended by the returned function or by {@link close}.
   * PGlite: in-process, same instance.
   */
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  /** Stops every listener and closes every connection. Idempotent. */
  close(): Promise<void>;
}

/**
 * Opens PostgreSQL (`databaseUrl`) or PGlite (`dataDir`, or in-memory) and runs
 * every pending migration in one transaction.
 *
 * @throws {MigrationError} when a migration fails; the connection is closed and
 *   the schema is left as it was.
 */
export async function openDatabase(config: DatabaseConfig, options: OpenDatabaseOptions = {}): Promise<Database> {
  const frozen = Object.freeze({ ...config });
  const migrations = options.migrations ?? MIGRATIONS;
  // Only the built-in migrations make a template (a test's own list never lands in the cache).
  const templates = frozen.pgliteTemplateDir !== undefined && options.migrations === undefined ? pgliteTemplates(frozen.pgliteTemplateDir, MIGRATIONS) : [];
  const cache = templates.find((template) => template.cache)?.file;
  // Each driver is loaded only when used: a process on PostgreSQL never loads PGlite's WASM, and the reverse.
  const opened = frozen.databaseUrl ? await openPostgres(frozen.databaseUrl, frozen.maxConnections ?? 10, frozen.pgThread ?? true) : await openPglite(frozen.dataDir, templates, frozen.pgliteThread ?? true, frozen.pgliteSharedBuffers ?? PGLITE_SHARED_BUFFERS);
  const { database } = opened;
  try {
    await migrate(database.db, migrations, 'migrationDb' in opened ? opened.migrationDb : undefined);
    // A cluster this start created, now migrated and still empty, becomes the template.
    if ('started' in opened && opened.started.initialised && cache !== undefined) await writePgliteTemplate(opened.started.pglite, cache);
  } catch (error) {
    await database.close();
    throw error;
  }
  // The connection string (and its password) lives in closures only; the printed form
  // (console.log, JSON.stringify, pino) says where the database is, password redacted.
  return withPrintedForm('Database', database, () =>
    frozen.databaseUrl ? { kind: database.kind, url: redactUrlPassword(frozen.databaseUrl) } : { kind: database.kind, dataDir: frozen.dataDir ?? '(in memory)', thread: frozen.pgliteThread ?? true },
  );
}

/**
 * Runs pending migrations in one transaction (kysely's Migrator, advisory-locked), on
 * `migrationDb` when given (PostgreSQL: a session without the idle-in-transaction timeout,
 * made only when something is pending, see `openPostgres`).
 */
export async function migrate(db: Kysely<DatabaseSchema>, migrations: Readonly<Record<string, Migration>>, migrationDb?: () => Kysely<DatabaseSchema>): Promise<void> {
  if (await allApplied(db, migrations)) return;
  const session = migrationDb?.() ?? db;
  try {
    await runMigrator(session, migrations);
  } finally {
    if (session !== db) await session.destroy();
  }
}

async function runMigrator(db: Kysely<DatabaseSchema>, migrations: Readonly<Record<string, Migration>>): Promise<void> {
  const migrator = new Migrator({ db, provider: { getMigrations: async () => ({ ...migrations }) } });
  const { error, results } = await migrator.migrateToLatest();
  if (error !== undefined) {
    const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? null;
    throw new MigrationError(failed, error);
  }
}

/**
 * Whether every migration is already recorded, read with two cheap queries. Kysely's Migrator
 * first introspects every column of every table to learn whether its own table exists (about
 * 0.6 s of a 1.6 s PGlite start); a process opening an up-to-date database skips it. A database
 * with anything pending goes through the Migrator (locked, one transaction) as before.
 */
async function allApplied(db: Kysely<DatabaseSchema>, migrations: Readonly<Record<string, Migration>>): Promise<boolean> {
  const { rows } = await sql<{ present: boolean }>`select to_regclass('kysely_migration') is not null as present`.execute(db);
  if (!rows[0]?.present) return false;
  const applied = await sql<{ name: string }>`select name from kysely_migration`.execute(db);
  const names = new Set(applied.rows.map((r) => r.name));
  return Object.keys(migrations).every((name) => names.has(name));
}

/** PostgreSQL's `int8` (`bigint`) type oid. */
const INT8_OID = 20;

/**
 * Reads an `int8` value as a JS number. Credit amounts and balances are `bigint`
 * columns (migration 0004); `pg` returns `int8` as a string and PGlite as a number or,
 * above 2^53-1, a BigInt, so without this the same row would have three shapes. The
 * application keeps every amount at most `Number.MAX_SAFE_INTEGER`; a larger value
 * would silently lose digits as a number, so it fails the query instead.
 */
export function parseInt8(text: string): number {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`int8 value ${text} is beyond Number.MAX_SAFE_INTEGER (2^53-1)`);
  return value;
}

async function notifyWith(db: Kysely<DatabaseSchema>, channel: string, payload: string): Promise<void> {
  await sql`select pg_notify(${channel}, ${payload})`.execute(db);
}

/** How long a pooled session may sit idle inside a transaction before PostgreSQL ends it (ms). */
export const IDLE_IN_TRANSACTION_MS = 10_000;

async function openPostgres(databaseUrl: string, max: number, inThread: boolean): Promise<{ database: Database; migrationDb: () => Kysely<DatabaseSchema> }> {
  const { default: pg } = await import('pg');
  // The int8 parser is this pool's own (`types`), not pg's global registry: pg-boss and
  // any other pg user in the process keep pg's defaults.
  const types = {
    getTypeParser: (oid: number, format?: 'text' | 'binary') =>
      oid === INT8_OID && format !== 'binary' ? parseInt8 : pg.types.getTypeParser(oid, format),
  };
  // A process paused inside a transaction (SIGSTOP, a stalled VM) would hold its row locks,
  // the job row's among them, for as long as it is paused: the sweep (`skip locked`) would
  // then never see its job, and nobody could take it over. The server ends such a session
  // after IDLE_IN_TRANSACTION_MS; our transactions never wait on anything but SQL.
  const pool = inThread ? await remotePool(databaseUrl, max) : localPool(pg, databaseUrl, max, types);
  const db = new Kysely<DatabaseSchema>({ dialect: new PostgresDialect({ pool }) });
  const listeners = new Set<pg.Client>();
  let closed: Promise<void> | null = null;
  // Migrations run in one long transaction from a process that may be starved of CPU (a
  // busy machine, a PGlite in the same process): the idle timeout above would end it
  // between two statements. It holds only the migrations' advisory lock, never a job row.
  const migrationDb = () => {
    const session = new pg.Pool({ connectionString: databaseUrl, max: 1, types });
    session.on('connect', (client) => client.on('error', () => undefined));
    session.on('error', () => undefined);
    return new Kysely<DatabaseSchema>({ dialect: new PostgresDialect({ pool: session }) });
  };

  const database: Database = {
    db,
    kind: 'postgres',
    notify: (channel, payload) => notifyWith(db, channel, payload),
    async listen(channel, onPayload) {
      if (closed) throw new Error('database is closed');
      // A dedicated client, not a pool connection: LISTEN belongs to a session,
      // and a pooled session would be handed to other queries.
      const client = new pg.Client({ connectionString: databaseUrl });
      client.on('error', () => {
        // A broken listener connection must not crash the process; the watcher
        // sees no more events and its owner decides (it can re-watch).
      });
      await client.connect();
      listeners.add(client);
      client.on('notification', (message) => {
        if (message.channel === channel) onPayload(message.payload ?? '');
      });
      try {
        await client.query(`listen ${pg.escapeIdentifier(channel)}`);
      } catch (error) {
        listeners.delete(client);
        await client.end();
        throw error;
      }
      let ended = false;
      return async () => {
        // close() may have ended this client already.
        if (ended || !listeners.has(client)) return;
        ended = true;
        listeners.delete(client);
        await client.end();
      };
    },
    close() {
      closed ??= (async () => {
        const open = [...listeners];
        listeners.clear();
        await Promise.allSettled(open.map((c) => c.end()));
        await db.destroy();
      })();
      return closed;
    },
  };
  return { database, migrationDb };
}

/** `pg`'s pool in this thread. */
function localPool(pgModule: typeof pg, databaseUrl: string, max: number, types: pg.CustomTypesConfig): PostgresPool {
  const pool = new pgModule.Pool({ connectionString: databaseUrl, max, types, idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_MS });
  // pg-pool drops its own 'error' listener while a client is checked out, and kysely adds
  // none: a connection killed mid-transaction (pg_terminate_backend, a failover) would be an
  // unhandled 'error' event and kill the process. The failing query still rejects, and the
  // engine treats that as a retryable `database` failure. An idle pooled connection that
  // breaks (server restart) is dropped by the pool; the next query gets a fresh connection
  // or fails with a classified error. (`pg-thread.mjs` does the same in its thread.)
  pool.on('connect', (client) => client.on('error', () => undefined));
  pool.on('error', () => undefined);
  return pool;
}

/** `pg`'s pool in a thread of its own ({@link PgRemotePool}; its int8 parser and error handling are the same). */
async function remotePool(databaseUrl: string, max: number): Promise<PostgresPool> {
  const { PgRemotePool } = await import('./pg-remote.js');
  // kysely's PostgresPoolClient also has a cursor overload (`stream()`), which nothing here uses.
  return new PgRemotePool({ connectionString: databaseUrl, max, idleInTransactionMs: IDLE_IN_TRANSACTION_MS }) as unknown as PostgresPool;
}

/**
 * PGlite's shared buffers. Its default (PostgreSQL's 128 MB) is zeroed inside the WASM heap at
 * every start; our tables are small, and 16 MB cut a start on an existing data folder from
 * ~1.4 s to ~1.0 s and its RSS from ~280 to ~175 MiB on the 2-core test machine (BENCHMARKS.md).
 */
const PGLITE_SHARED_BUFFERS = '16MB';

/** What the project uses of PGlite, whichever thread it runs in (PGlite and `PgliteRemote` both are one). */
interface PgliteSession extends DumpablePglite {
  query(sql: string, params?: unknown[]): Promise<{ readonly rows: unknown[]; readonly affectedRows?: number | undefined }>;
  listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>>;
  close(): Promise<void>;
}

/**
 * Starts PGlite in its own thread (`inThread`: `PgliteRemote`, which never loads PGlite's
 * module in this one) or in this one.
 */
async function startPglite(dataDir: string | undefined, templates: readonly PgliteTemplate[], inThread: boolean, sharedBuffersSize: string): Promise<OpenedPglite<PgliteSession>> {
  const sharedBuffers = ['-c', `shared_buffers=${sharedBuffersSize}`];
  if (inThread) {
    const { PgliteRemote } = await import('./pglite-remote.js');
    return openPgliteDataDir<PgliteSession>(
      async (options) =>
        PgliteRemote.open({
          dataDir: options.dataDir,
          loadDataDir: options.loadDataDir === undefined ? undefined : new Uint8Array(await options.loadDataDir.arrayBuffer()),
          // The thread adds PGlite's default start parameters and the int8 parser itself.
          extraStartParams: sharedBuffers,
        }),
      dataDir,
      templates,
      {},
    );
  }
  const { PGlite } = await import('@electric-sql/pglite');
  return openPgliteDataDir<PgliteSession>((options) => PGlite.create(options), dataDir, templates, {
    parsers: { [INT8_OID]: parseInt8 },
    startParams: [...PGlite.defaultStartParams, ...sharedBuffers],
  });
}

async function openPglite(dataDir: string | undefined, templates: readonly PgliteTemplate[], inThread: boolean, sharedBuffers: string): Promise<{ database: Database; started: OpenedPglite<PgliteSession> }> {
  const [started, { PGliteDialect }] = await Promise.all([startPglite(dataDir, templates, inThread, sharedBuffers), import('kysely-pglite-dialect')]);
  const { pglite } = started;
  // The dialect calls `query` and `close` only, which PgliteRemote answers as PGlite does.
  const db = new Kysely<DatabaseSchema>({ dialect: new PGliteDialect(pglite as unknown as PGlite) });
  let closed: Promise<void> | null = null;

  const database: Database = {
    db,
    kind: 'pglite',
    notify: (channel, payload) => notifyWith(db, channel, payload),
    async listen(channel, onPayload) {
      if (closed) throw new Error('database is closed');
      // PGlite is one session shared with Kysely. Holding Kysely's (single,
      // queued) connection while LISTEN runs makes sure it does not land inside
      // another caller's open transaction, where a rollback would undo it.
      const unlisten = await db.connection().execute(() => pglite.listen(channel, onPayload));
      let ended = false;
      return async () => {
        if (ended || closed) return;
        ended = true;
        await db.connection().execute(() => unlisten());
      };
    },
    close() {
      // Wait for queries already queued on the single session first: closing PGlite
      // under a running query spins the CPU forever (seen with a late lease release).
      // Kysely's driver then closes the PGlite instance.
      closed ??= db
        .connection()
        .execute(async () => undefined)
        .catch(() => undefined)
        .then(() => db.destroy());
      return closed;
    },
  };
  return { database, started };
}
