import { PGlite } from '@electric-sql/pglite';
import { Kysely, PostgresDialect, sql } from 'kysely';
import { Migrator } from 'kysely/migration';
import { PGliteDialect } from 'kysely-pglite-dialect';
import pg from 'pg';
import { MigrationError } from './errors.js';
import { MIGRATIONS } from './migrations/index.js';
/**
 * Opens PostgreSQL (`databaseUrl`) or PGlite (`dataDir`, or in-memory) and runs
 * every pending migration in one transaction.
 *
 * @throws {MigrationError} when a migration fails; the connection is closed and
 *   the schema is left as it was.
 */
export async function openDatabase(config, options = {}) {
    const frozen = Object.freeze({ ...config });
    const database = frozen.databaseUrl ? openPostgres(frozen.databaseUrl, frozen.maxConnections ?? 10) : await openPglite(frozen.dataDir);
    try {
        await migrate(database.db, options.migrations ?? MIGRATIONS);
    }
    catch (error) {
        await database.close();
        throw error;
    }
    return database;
}
/** Runs pending migrations in one transaction (kysely's Migrator, advisory-locked). */
export async function migrate(db, migrations) {
    const migrator = new Migrator({ db, provider: { getMigrations: async () => ({ ...migrations }) } });
    const { error, results } = await migrator.migrateToLatest();
    if (error !== undefined) {
        const failed = results?.find((r) => r.status === 'Error')?.migrationName ?? null;
        throw new MigrationError(failed, error);
    }
}
async function notifyWith(db, channel, payload) {
    await sql `select pg_notify(${channel}, ${payload})`.execute(db);
}
function openPostgres(databaseUrl, max) {
    const pool = new pg.Pool({ connectionString: databaseUrl, max });
    // An idle pooled connection that breaks (server restart) is dropped by the
    // pool; without a listener its 'error' event would crash the process. The
    // next query gets a fresh connection or fails with a classified error.
    pool.on('error', () => { });
    const db = new Kysely({ dialect: new PostgresDialect({ pool }) });
    const listeners = new Set();
    let closed = null;
    return {
        db,
        kind: 'postgres',
        notify: (channel, payload) => notifyWith(db, channel, payload),
        async listen(channel, onPayload) {
            if (closed)
                throw new Error('database is closed');
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
                if (message.channel === channel)
                    onPayload(message.payload ?? '');
            });
            try {
                await client.query(`listen ${pg.escapeIdentifier(channel)}`);
            }
            catch (error) {
                listeners.delete(client);
                await client.end();
                throw error;
            }
            let ended = false;
            return async () => {
                // close() may have ended this client already.
                if (ended || !listeners.has(client))
                    return;
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
}
async function openPglite(dataDir) {
    const pglite = await PGlite.create(dataDir === undefined ? undefined : { dataDir });
    const db = new Kysely({ dialect: new PGliteDialect(pglite) });
    let closed = null;
    return {
        db,
        kind: 'pglite',
        notify: (channel, payload) => notifyWith(db, channel, payload),
        async listen(channel, onPayload) {
            if (closed)
                throw new Error('database is closed');
            // PGlite is one session shared with Kysely. Holding Kysely's (single,
            // queued) connection while LISTEN runs makes sure it does not land inside
            // another caller's open transaction, where a rollback would undo it.
            const unlisten = await db.connection().execute(() => pglite.listen(channel, onPayload));
            let ended = false;
            return async () => {
                if (ended || closed)
                    return;
                ended = true;
                await db.connection().execute(() => unlisten());
            };
        },
        close() {
            // Kysely's driver closes the PGlite instance.
            closed ??= db.destroy();
            return closed;
        },
    };
}
