/**
 * Forces a real race on PostgreSQL: the test holds a row lock in a session of its
 * own, starts the racing calls (each opens its transaction and blocks on that row),
 * waits until `pg_stat_activity` shows every one of them waiting on a lock, then
 * commits, so all of them go on at once from inside open transactions. Without this,
 * "concurrent" calls may just as well run one after another and never reach the
 * branch that handles the race.
 *
 * PGlite has one connection: there calls run one after another by nature, and
 * {@link raceCalls} simply runs them (tests say so in their title).
 */
import pg from 'pg';
import type { DatabaseConfig } from '../../src/db/database.js';
import type { DatabaseKind } from './databases.js';

/** A row lock held by the test's own session until {@link HeldRowLock.release}. */
export interface HeldRowLock {
  /** Resolves once exactly `n` other sessions of this database wait on a lock; fails after `timeoutMs`. */
  waiters(n: number, timeoutMs?: number): Promise<void>;
  /** Sessions of this database (other than the holder) waiting on a lock now. */
  waiting(): Promise<number>;
  /** Commits the holder's transaction and closes its session (idempotent). */
  release(): Promise<void>;
}

/** A row to lock: `select 1 from <table> where <column> = $1 for update` must find exactly one row. */
export interface RowToLock {
  readonly table: 'jobs' | 'credit_accounts' | 'slots';
  readonly where: Readonly<Record<string, string | number>>;
}

export async function holdRowLock(config: DatabaseConfig, row: RowToLock): Promise<HeldRowLock> {
  if (!config.databaseUrl) throw new Error('holdRowLock needs PostgreSQL (a databaseUrl)');
  const client = new pg.Client({ connectionString: config.databaseUrl });
  await client.connect();
  const columns = Object.keys(row.where);
  const condition = columns.map((c, i) => `${c} = $${i + 1}`).join(' and ');
  let open = true;
  try {
    await client.query('begin');
    const locked = await client.query(`select 1 from ${row.table} where ${condition} for update`, Object.values(row.where));
    if (locked.rowCount !== 1) throw new Error(`holdRowLock: ${row.table} where ${JSON.stringify(row.where)} matched ${locked.rowCount} rows, not 1`);
  } catch (error) {
    await client.end();
    throw error;
  }
  const waiting = async () => {
    // Inside a transaction PostgreSQL answers pg_stat_activity from a snapshot taken at its first
    // read; clear it so each look sees the sessions as they are now.
    await client.query('select pg_stat_clear_snapshot()');
    const { rows } = await client.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity
       where datname = current_database() and pid <> pg_backend_pid() and wait_event_type = 'Lock'`,
    );
    return rows[0]?.n ?? 0;
  };
  return {
    waiting,
    async waiters(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      let seen = await waiting();
      while (seen !== n) {
        if (seen > n) throw new Error(`${seen} sessions wait on a lock, more than the ${n} expected`);
        if (Date.now() > deadline) {
          await client.query('select pg_stat_clear_snapshot()');
          const { rows } = await client.query(`select pid, state, wait_event_type, wait_event, left(query, 80) as query from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()`);
          throw new Error(`only ${seen} of ${n} sessions were waiting on the lock after ${timeoutMs} ms: ${JSON.stringify(rows)}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 10));
        seen = await waiting();
      }
    },
    async release() {
      if (!open) return;
      open = false;
      try {
        await client.query('commit');
      } finally {
        await client.end();
      }
    },
  };
}

/**
 * Runs `groups` of calls racing on `row`. PostgreSQL: under the test's lock, group
 * by group (a group starts once every call of the ones before it waits on the lock,
 * so the lock queue holds them in group order), then the lock is released and they
 * all go on together. PGlite: all calls at once, which on one connection means one
 * after another. Answers every call's settled outcome, in order.
 */
export async function raceCalls<T>(
  ctx: { readonly kind: DatabaseKind; readonly config: DatabaseConfig },
  row: RowToLock,
  groups: readonly (readonly (() => Promise<T>)[])[],
): Promise<PromiseSettledResult<T>[]> {
  if (ctx.kind !== 'postgres') return Promise.allSettled(groups.flat().map((call) => call()));
  const lock = await holdRowLock(ctx.config, row);
  // Settled at once, so a call that fails while the lock is being released is never an unhandled rejection.
  const started: Promise<PromiseSettledResult<T>>[] = [];
  const settle = (call: () => Promise<T>): Promise<PromiseSettledResult<T>> =>
    call().then(
      (value) => ({ status: 'fulfilled', value }),
      (reason: unknown) => ({ status: 'rejected', reason }),
    );
  try {
    for (const group of groups) {
      started.push(...group.map(settle));
      await lock.waiters(started.length);
    }
  } catch (error) {
    await lock.release();
    await Promise.all(started);
    throw error;
  }
  await lock.release();
  return Promise.all(started);
}

/** The title of a racing test: PGlite runs the "racing" calls one after another, and says so. */
export function raceTitle(kind: DatabaseKind, title: string): string {
  return kind === 'postgres'
    ? `${title} (real race: every call waits inside its transaction on a row lock the test holds, then all go on together)`
    : `${title} (PGlite: one connection, so the calls run one after another by nature; the real race runs on PostgreSQL)`;
}
