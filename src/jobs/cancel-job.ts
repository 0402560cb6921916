import { lastValueFrom, of } from 'rxjs';
import { JobLeasedError, JobNotFoundError, getJobStatus, requestCancel, retryTransient, type JobRowStatus } from '../db/index.js';
import { runStoredJob, type RunJobDeps } from '../streams/run-job.js';
import { visibleJob, type Caller } from './caller.js';

/** A cancel of a job that has already ended: nothing to do (the service answers 409). */
export class JobEndedError extends Error {
  override readonly name = 'JobEndedError';
  constructor(
    readonly jobId: string,
    readonly status: JobRowStatus,
  ) {
    super(`job ${jobId} has already ended (${status})`);
  }
}

/**
 * What a cancel did: `cancelled` (nobody ran the job: it ended here, with no provider
 * call), or `requested` (the process running it stops within its cancel poll, about a
 * second, and ends it `cancelled`).
 */
export interface CancelOutcome {
  readonly jobId: string;
  readonly outcome: 'cancelled' | 'requested';
  readonly status: 'cancelled' | 'running';
}

/**
 * Cancels a job: sets its cancel request (`requestCancel`), then ends it here if nobody
 * runs it (a queued job, or one whose runner died); a job another process runs is left to
 * that process, which polls the request. `imagegen cancel` and `DELETE /v1/jobs/:id`.
 *
 * @throws {JobNotFoundError} no such job (or, with a `caller`, not the caller's).
 * @throws {JobEndedError} the job has already ended.
 */
export async function cancelJob(deps: RunJobDeps, jobId: string, caller?: Caller): Promise<CancelOutcome> {
  if (caller) await visibleJob(deps.database, caller, jobId);
  const requested = await retryTransient(() => requestCancel(deps.database, jobId));
  if (!requested) {
    const status = await retryTransient(() => getJobStatus(deps.database, jobId));
    if (status === null) throw new JobNotFoundError(jobId);
    throw new JobEndedError(jobId, status);
  }
  try {
    await lastValueFrom(runStoredJob(deps, jobId, { cancel$: of(true) }), { defaultValue: null });
    return { jobId, outcome: 'cancelled', status: 'cancelled' };
  } catch (error) {
    if (!(error instanceof JobLeasedError)) throw error;
    return { jobId, outcome: 'requested', status: 'running' };
  }
}
