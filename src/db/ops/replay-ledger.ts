import { sql } from 'kysely';
import type { Database } from '../database.js';

/**
 * Recomputes a user's balance and reservation from the ledger alone:
 * `balance = grants - reserves + releases`, `reserved = reserves - captures - releases`.
 * It must always equal {@link getBalance}; tests and audits compare the two.
 * The sums are cast back to `bigint` (PostgreSQL sums `bigint` as `numeric`, which
 * both drivers return as a string); the int8 parser makes them numbers.
 */
export async function replayLedger(database: Database, userId: string): Promise<{ balance: number; reserved: number }> {
  const row = await database.db
    .selectFrom('credit_ledger')
    .select([
      sql<number>`coalesce(sum(case kind when 'grant' then amount when 'reserve' then -amount when 'release' then amount else 0 end), 0)::bigint`.as(
        'balance',
      ),
      sql<number>`coalesce(sum(case kind when 'reserve' then amount when 'capture' then -amount when 'release' then -amount else 0 end), 0)::bigint`.as(
        'reserved',
      ),
    ])
    .where('user_id', '=', userId)
    .executeTakeFirstOrThrow();
  return { balance: row.balance, reserved: row.reserved };
}
