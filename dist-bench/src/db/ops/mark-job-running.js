import { sql } from 'kysely';
import { JobNotFoundError, JobStateError } from '../errors.js';
/**
 * `queued` -> `running` (also fine when already running, e.g. on resume).
 * A single conditional update: the row lock it takes is enough, and the
 * `status in (...)` guard refuses to revive a finished job.
 */
export async function markJobRunning(database, jobId) {
    const result = await database.db
        .updateTable('jobs')
        .set({ status: 'running', started_at: sql `coalesce(started_at, now())`, updated_at: sql `now()` })
        .where('id', '=', jobId)
        .where('status', 'in', ['queued', 'running'])
        .executeTakeFirst();
    if (result.numUpdatedRows > 0n)
        return;
    const job = await database.db.selectFrom('jobs').select('status').where('id', '=', jobId).executeTakeFirst();
    if (!job)
        throw new JobNotFoundError(jobId);
    throw new JobStateError(jobId, `cannot run a job that is ${job.status}`);
}
