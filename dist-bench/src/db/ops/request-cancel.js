import { sql } from 'kysely';
import { encodeNotification, PROGRESS_CHANNEL } from '../notifications.js';
/**
 * Sets `cancel_requested` on an unfinished job and publishes
 * `job:cancel-requested`, in one transaction. Returns false when the job does
 * not exist or has already ended. One conditional update: its row lock is all
 * it needs; the engine polls or listens and stops on its own.
 */
export async function requestCancel(database, jobId) {
    return database.db.transaction().execute(async (trx) => {
        const row = await trx
            .updateTable('jobs')
            .set({ cancel_requested: true, updated_at: sql `now()` })
            .where('id', '=', jobId)
            .where('finished_at', 'is', null)
            .returning('id')
            .executeTakeFirst();
        if (!row)
            return false;
        const payload = encodeNotification({ type: 'job:cancel-requested', jobId });
        await sql `select pg_notify(${PROGRESS_CHANNEL}, ${payload})`.execute(trx);
        return true;
    });
}
/** Whether somebody asked to cancel the job (false for an unknown job). A plain read. */
export async function isCancelRequested(database, jobId) {
    const row = await database.db.selectFrom('jobs').select('cancel_requested').where('id', '=', jobId).executeTakeFirst();
    return row?.cancel_requested ?? false;
}
