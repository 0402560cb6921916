import { sql } from 'kysely';
/**
 * Recomputes a user's balance and reservation from the ledger alone:
 * `balance = grants - reserves + releases`, `reserved = reserves - captures - releases`.
 * It must always equal {@link getBalance}; tests and audits compare the two.
 */
export async function replayLedger(database, userId) {
    const row = await database.db
        .selectFrom('credit_ledger')
        .select([
        sql `coalesce(sum(case kind when 'grant' then amount when 'reserve' then -amount when 'release' then amount else 0 end), 0)::int`.as('balance'),
        sql `coalesce(sum(case kind when 'reserve' then amount when 'capture' then -amount when 'release' then -amount else 0 end), 0)::int`.as('reserved'),
    ])
        .where('user_id', '=', userId)
        .executeTakeFirstOrThrow();
    return { balance: row.balance, reserved: row.reserved };
}
