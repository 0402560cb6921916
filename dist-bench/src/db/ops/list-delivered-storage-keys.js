/**
 * Storage keys of every committed delivery of a job. An object under the job's
 * prefix that is not in this set was stored by a delivery whose transaction
 * never committed: an orphan the resume step may delete. A plain read.
 */
export async function listDeliveredStorageKeys(database, jobId) {
    const rows = await database.db.selectFrom('attachments').select('storage_key').where('job_id', '=', jobId).execute();
    return new Set(rows.map((r) => r.storage_key));
}
