import { sql } from 'kysely';
import { assertCount } from './assert.js';
/**
 * Adds `amount` spendable credits to the user's account (creating it) and writes
 * a `grant` ledger entry, in one transaction.
 *
 * Locking: the `insert ... on conflict do update` takes the account row lock, so
 * it queues behind a submit of the same user that holds the row `for update`
 * and the increment is applied to the committed balance, never a stale read.
 */
export async function grantCredits(database, userId, amount) {
    assertCount('amount', amount, 1);
    return database.db.transaction().execute(async (trx) => {
        const row = await trx
            .insertInto('credit_accounts')
            .values({ user_id: userId, balance: amount })
            .onConflict((oc) => oc.column('user_id').doUpdateSet({ balance: sql `credit_accounts.balance + excluded.balance`, updated_at: sql `now()` }))
            .returning('balance')
            .executeTakeFirstOrThrow();
        await trx.insertInto('credit_ledger').values({ user_id: userId, kind: 'grant', amount }).execute();
        return { balance: row.balance };
    });
}
