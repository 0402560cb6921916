import { sql } from 'kysely';
import type { Database } from '../database.js';
import type { WebhookDeliveryStatus } from '../schema.js';
import { dbTimeFromNow } from '../internal/db-time.js';

export interface RecordWebhookAttemptOptions {
  /** The delivery (`msg_<jobId>_<seq>`). */
  readonly id: string;
  /** The dispatcher that claimed it. */
  readonly owner: string;
  /** When the attempt started (the sender's clock), and how long it took. */
  readonly at: Date;
  readonly durationMs: number;
  /** The receiver's HTTP status, or null when there was none (then `error` says why). */
  readonly statusCode: number | null;
  /** `timeout`, `connection_reset`, `connection_refused`, `dns`, `forbidden_address`, `tls`, `network`; null with a status. */
  readonly error: string | null;
  /** A 2xx: the delivery is done. */
  readonly delivered: boolean;
  /** After a failure: how long until the next attempt (full jitter, computed by the dispatcher). */
  readonly retryDelayMs: number;
  /** How long after `window_from` attempts go on; the last one is due at the window's end. */
  readonly retryWindowMs: number;
}

/**
 * Records one attempt of a delivery and decides what comes next, in one transaction:
 *
 * - the attempt row (numbered on from the delivery's `attempts`);
 * - a 2xx: `delivered` (whoever claimed it: the receiver has it);
 * - a failure, while the claim is still `owner`'s: the next attempt after `retryDelayMs`,
 *   but no later than the end of the retry window; a failure at or after the window's
 *   end makes the delivery `failed` (kept, visible in `imagegen webhooks <jobId>`). A claim
 *   another dispatcher took over (this one outlived its lease) is left to that one.
 *
 * Returns the delivery's status after the attempt.
 *
 * Locking: the delivery row `for update`, so the attempt number and the state change
 * cannot interleave with a claim or a redelivery of the same row.
 */
export async function recordWebhookAttempt(database: Database, options: RecordWebhookAttemptOptions): Promise<WebhookDeliveryStatus | null> {
  if ((options.statusCode === null) === (options.error === null)) throw new TypeError('an attempt has either a status code or an error');
  return database.db.transaction().execute(async (trx) => {
    const row = await trx
      .selectFrom('webhook_deliveries')
      .select(['status', 'attempts', 'claimed_by', sql<boolean>`now() >= window_from + ${`${Math.ceil(options.retryWindowMs)} milliseconds`}::interval`.as('expired')])
      .where('id', '=', options.id)
      .forUpdate()
      .executeTakeFirst();
    if (!row) return null;
    const attempt = row.attempts + 1;
    await trx
      .insertInto('webhook_attempts')
      .values({ delivery_id: options.id, attempt, at: options.at, duration_ms: Math.max(0, Math.round(options.durationMs)), status_code: options.statusCode, error: options.error })
      .execute();
    let status = row.status;
    const update = trx.updateTable('webhook_deliveries').where('id', '=', options.id);
    if (options.delivered && row.status === 'pending') {
      status = 'delivered';
      await update.set({ attempts: attempt, status, claimed_by: null, finished_at: sql`now()` }).execute();
    } else if (!options.delivered && row.status === 'pending' && row.claimed_by === options.owner) {
      if (row.expired) {
        status = 'failed';
        await update.set({ attempts: attempt, status, claimed_by: null, finished_at: sql`now()` }).execute();
      } else {
        const windowEnd = sql<Date>`window_from + ${`${Math.ceil(options.retryWindowMs)} milliseconds`}::interval`;
        await update
          .set((eb) => ({
            attempts: attempt,
            retry_attempt: eb('retry_attempt', '+', 1),
            claimed_by: null,
            next_attempt_at: sql`least(${dbTimeFromNow(options.retryDelayMs)}, ${windowEnd})`,
          }))
          .execute();
      }
    } else {
      await update.set({ attempts: attempt }).execute();
    }
    return status;
  });
}
