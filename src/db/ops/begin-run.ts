import { sql } from 'kysely';
import type { Database } from '../database.js';
import { JobNotFoundError, JobStateError } from '../errors.js';
import { abandonStartedAttempts } from '../internal/abandon-started-attempts.js';

export interface BeganRun {
  /** The previous run of this job died (the job was still `running`, not handed back). */
  readonly previousRunDied: boolean;
  /** Runs in a row that died without delivering anything, the previous one included. */
  readonly crashResumes: number;
  /** Attempts of dead runs marked `abandoned` now. */
  readonly abandoned: number;
}

/**
 * Starts a run of a job the caller holds the lease of: `queued` or `running` ->
 * `running`. In one transaction, under the job row lock (`for update`, the lock
 * `deliverSlot` and `finishJob` take first):
 *
 * - the attempts a dead run left `started` are ended (`abandonStartedAttempts`), so
 *   they cost the resumed run no budget;
 * - the crash streak is updated: a job found `running` was not handed back, so its
 *   last run died; if that run delivered nothing since it started, the streak grows,
 *   otherwise it restarts at 0; a clean hand-back (`queued`) also resets it.
 *
 * Refuses to revive a finished job.
 *
 * @throws {JobStateError} the job already ended.
 */
export async function beginRun(database: Database, jobId: string): Promise<BeganRun> {
  return database.db.transaction().execute(async (trx) => {
    const job = await trx
      .selectFrom('jobs')
      .select(['status', 'delivered', 'delivered_at_run_start', 'crash_resumes'])
      .where('id', '=', jobId)
      .forUpdate()
      .executeTakeFirst();
    if (!job) throw new JobNotFoundError(jobId);
    if (job.status !== 'queued' && job.status !== 'running') throw new JobStateError(jobId, `cannot run a job that is ${job.status}`);
    const abandoned = await abandonStartedAttempts(trx, jobId);
    const previousRunDied = job.status === 'running';
    const deliveredSince = job.delivered > (job.delivered_at_run_start ?? 0);
    const crashResumes = previousRunDied && !deliveredSince ? job.crash_resumes + 1 : 0;
    await trx
      .updateTable('jobs')
      .set({
        status: 'running',
        started_at: sql`coalesce(started_at, now())`,
        updated_at: sql`now()`,
        crash_resumes: crashResumes,
        delivered_at_run_start: job.delivered,
      })
      .where('id', '=', jobId)
      .execute();
    return { previousRunDied, crashResumes, abandoned };
  });
}
