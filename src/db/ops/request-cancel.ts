import { sql } from 'kysely';
import type { Database } from '../database.js';
import { appendJobEvents } from '../internal/append-job-events.js';
import { encodeNotification, PROGRESS_CHANNEL, type JobCancelRequestedNotification } from '../notifications.js';

/**
 * Sets `cancel_requested` on an unfinished job, appends `job:cancel-requested` to its
 * event log and publishes it, in one transaction. Returns false when the job does
 * not exist or has already ended. The conditional update's row lock is all it needs
 * (the event is numbered under the same job row lock); the engine polls or listens
 * and stops on its own. Each request is logged, a repeated one too.
 */
export async function requestCancel(database: Database, jobId: string): Promise<boolean> {
  return database.db.transaction().execute(async (trx) => {
    const row = await trx
      .updateTable('jobs')
      .set({ cancel_requested: true, updated_at: sql`now()` })
      .where('id', '=', jobId)
      .where('finished_at', 'is', null)
      .returning('id')
      .executeTakeFirst();
    if (!row) return false;
    const requested: JobCancelRequestedNotification = { type: 'job:cancel-requested', jobId };
    await appendJobEvents(trx, jobId, [requested]);
    await sql`select pg_notify(${PROGRESS_CHANNEL}, ${encodeNotification(requested)})`.execute(trx);
    return true;
  });
}

/** Whether somebody asked to cancel the job (false for an unknown job). A plain read. */
export async function isCancelRequested(database: Database, jobId: string): Promise<boolean> {
  const row = await database.db.selectFrom('jobs').select('cancel_requested').where('id', '=', jobId).executeTakeFirst();
  return row?.cancel_requested ?? false;
}
