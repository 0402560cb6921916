import type { JobSpec } from '../../domain/job-spec.js';
import type { Database } from '../database.js';

/** Who owns a stored job and the spec it was submitted with. */
export interface StoredJobSpec {
  readonly userId: string;
  /** The spec as recorded by `submitJob` (input files already resolved to attach ids). */
  readonly spec: JobSpec;
}

/**
 * The owner and spec of job `jobId`, or null when no job has that id.
 *
 * A plain read, no lock: submit uses it to decide whether a job id is taken
 * (another user's, or this user's with another spec) before anything is written. A
 * submit racing it is decided by `submitJob`'s insert (the job id is the primary
 * key), after which the caller reads again.
 */
export async function getJobSpec(database: Database, jobId: string): Promise<StoredJobSpec | null> {
  const row = await database.db.selectFrom('jobs').select(['user_id', 'spec']).where('id', '=', jobId).executeTakeFirst();
  return row ? { userId: row.user_id, spec: row.spec } : null;
}
