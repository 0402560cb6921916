import { getBalance, grantCredits, retryTransient, type Database } from '../db/index.js';
import { MAX_CREDITS } from '../domain/credit-amount.js';
import { actingUser, AdminOnlyError, InvalidInputError, type Caller } from './caller.js';

/** A user's money: `balance` what the user can still spend, `reserved` what unfinished jobs hold. */
export interface Credits {
  readonly userId: string;
  readonly balance: number;
  readonly reserved: number;
}

/** The caller's credits (an admin may name a user). `GET /v1/credits`, `imagegen credits balance`. */
export async function creditsOf(database: Database, caller: Caller, named?: string): Promise<Credits> {
  const userId = actingUser(caller, named);
  const { balance, reserved } = await retryTransient(() => getBalance(database, userId));
  return { userId, balance, reserved };
}

/**
 * Grants `amount` credits to `userId`: an admin's act only.
 *
 * @throws {AdminOnlyError} the caller is not an admin.
 * @throws {InvalidInputError} an amount that is not a whole number in 1..2^53-1.
 * @throws {CreditOverflowError} the grant would take what the user holds past 2^53-1.
 */
export async function grantCreditsTo(database: Database, caller: Caller, userId: string, amount: unknown): Promise<Credits> {
  if (!caller.admin) throw new AdminOnlyError('granting credits');
  if (typeof amount !== 'number' || !Number.isSafeInteger(amount) || amount < 1) {
    throw new InvalidInputError([{ field: 'amount', rule: `must be a whole number of credits in 1..${MAX_CREDITS}, got ${JSON.stringify(amount) ?? String(amount)}` }]);
  }
  // Not retried: a grant is not idempotent, and a lost answer must not grant twice.
  await grantCredits(database, userId, amount);
  const { balance, reserved } = await retryTransient(() => getBalance(database, userId));
  return { userId, balance, reserved };
}
