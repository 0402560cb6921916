import type { Transaction } from 'kysely';
import type { DatabaseSchema } from '../schema.js';

/**
 * Creates the user's account if missing and locks its row (`for update`) until
 * the transaction ends.
 *
 * Why: every operation that reads a balance and then moves money (submit's
 * reserve, grant) holds this lock, so two transactions of one user cannot both
 * read the same balance and both spend it. `for update` on a missing row locks
 * nothing, hence the insert first (a concurrent insert of the same user waits on
 * the primary key, then `do nothing`).
 */
export async function lockCreditAccount(
  trx: Transaction<DatabaseSchema>,
  userId: string,
): Promise<{ balance: number; reserved: number }> {
  await trx.insertInto('credit_accounts').values({ user_id: userId }).onConflict((oc) => oc.column('user_id').doNothing()).execute();
  return trx
    .selectFrom('credit_accounts')
    .select(['balance', 'reserved'])
    .where('user_id', '=', userId)
    .forUpdate()
    .executeTakeFirstOrThrow();
}
