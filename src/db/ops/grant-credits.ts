import { sql } from 'kysely';
import { MAX_CREDITS } from '../../domain/credit-amount.js';
import type { Database } from '../database.js';
import { CreditOverflowError } from '../errors.js';
import { assertAmount } from '../internal/assert.js';
import { lockCreditAccount } from '../internal/lock-credit-account.js';

/**
 * Adds `amount` spendable credits to the user's account (creating it) and writes
 * a `grant` ledger entry, in one transaction.
 *
 * Refuses ({@link CreditOverflowError}, nothing written) a grant that would take
 * balance + reserved past {@link MAX_CREDITS} (2^53-1). Checking the sum, not the
 * balance alone, keeps every later value exact too: a release only moves credits
 * from reserved back to the balance, so no balance, reservation or ledger replay
 * can ever exceed what the user holds.
 *
 * Locking: the account row `for update` (`lockCreditAccount`), so the overflow check
 * and the increment see the committed balance, never a stale read, and a grant
 * queues behind a submit of the same user that holds the same lock.
 *
 * @throws {RangeError} `amount` is not an integer in 1..MAX_CREDITS.
 */
export async function grantCredits(database: Database, userId: string, amount: number): Promise<{ balance: number }> {
  assertAmount('amount', amount, 1);
  return database.db.transaction().execute(async (trx) => {
    const account = await lockCreditAccount(trx, userId);
    const held = account.balance + account.reserved;
    if (amount > MAX_CREDITS - held) throw new CreditOverflowError(userId, amount, held, MAX_CREDITS);
    const row = await trx
      .updateTable('credit_accounts')
      .set((eb) => ({ balance: eb('balance', '+', amount), updated_at: sql`now()` }))
      .where('user_id', '=', userId)
      .returning('balance')
      .executeTakeFirstOrThrow();
    await trx.insertInto('credit_ledger').values({ user_id: userId, kind: 'grant', amount }).execute();
    return { balance: row.balance };
  });
}
