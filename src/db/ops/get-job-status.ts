import type { Database } from '../database.js';
import type { JobRowStatus } from '../schema.js';

/** A job's row status, or null when it does not exist. One plain read, no lock. */
export async function getJobStatus(database: Database, jobId: string): Promise<JobRowStatus | null> {
  const row = await database.db.selectFrom('jobs').select('status').where('id', '=', jobId).executeTakeFirst();
  return row?.status ?? null;
}
