import { sql } from 'kysely';
/**
 * `running` -> `queued`: a worker shutting down hands the job back so another
 * worker resumes it. A single conditional update; a finished job is left alone.
 */
export async function suspendJob(database, jobId) {
    await database.db
        .updateTable('jobs')
        .set({ status: 'queued', updated_at: sql `now()` })
        .where('id', '=', jobId)
        .where('status', '=', 'running')
        .execute();
}
