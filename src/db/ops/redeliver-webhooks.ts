import { sql } from 'kysely';
import type { Database } from '../database.js';
import { WEBHOOK_DELIVERIES_CHANNEL } from '../internal/webhook-outbox.js';

/**
 * Sends job `jobId`'s webhook deliveries again: every one (delivered, failed or still
 * pending) becomes `pending`, due now, with a fresh retry window and backoff; its
 * attempts so far are kept. Receivers drop what they already have by `webhook-id`.
 * Wakes the dispatchers. Returns how many deliveries were made due.
 *
 * Locking: the job's delivery rows, by the update. A dispatcher sending one of them
 * now keeps its claim id off: its answer is recorded as an attempt, and a 2xx still
 * marks the row delivered.
 */
export async function redeliverWebhooks(database: Database, jobId: string): Promise<number> {
  return database.db.transaction().execute(async (trx) => {
    const result = await trx
      .updateTable('webhook_deliveries')
      .set({ status: 'pending', next_attempt_at: sql`now()`, window_from: sql`now()`, retry_attempt: 0, claimed_by: null, finished_at: null })
      .where('job_id', '=', jobId)
      .executeTakeFirst();
    const count = Number(result.numUpdatedRows);
    if (count > 0) await sql`select pg_notify(${WEBHOOK_DELIVERIES_CHANNEL}, ${String(count)})`.execute(trx);
    return count;
  });
}
