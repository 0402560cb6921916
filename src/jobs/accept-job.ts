import { FINAL_JOB_STATUSES, getJobStatus, retryTransient } from '../db/index.js';
import type { JobSpecLimits } from '../domain/job-spec.js';
import { readJobRequest } from '../sources/job-request.js';
import type { Caller } from './caller.js';
import { jobSummary, type JobSummary } from './job-summary.js';
import { submitSpec, type SubmitDeps } from './submit-job.js';

/**
 * Hands a submitted job to whatever runs jobs: the service's own runner on the embedded
 * database, the queue of the fleet's workers on PostgreSQL. Idempotent per job id: a job
 * already running or queued is not run twice.
 */
export interface JobDispatcher {
  dispatch(jobId: string, options: { readonly priority: number }): Promise<void>;
}

export interface AcceptJobDeps extends SubmitDeps {
  readonly dispatcher: JobDispatcher;
}

export interface AcceptJobOptions {
  readonly pricePerImage: number;
  readonly limits?: JobSpecLimits;
  /** `IMAGEGEN_WEBHOOK_ALLOW_LOCAL`: the webhook's host may resolve to this machine or a private network. Default false. */
  readonly allowLocalWebhooks?: boolean | undefined;
}

/** What {@link acceptJob} answers: the job's summary, and whether this request created it. */
export interface AcceptedJob {
  readonly created: boolean;
  readonly summary: JobSummary;
}

/**
 * Submits a job sent over HTTP (`readJobRequest`: the token's user, base64 images) with
 * the submit rules every entry point shares (`submitSpec`), then dispatches it.
 *
 * Idempotent on `jobId`: the same spec again answers the same job (`created: false`) and
 * dispatches it again only while it has not ended (a dispatch lost to a crash is made
 * good; the dispatcher ignores a job it runs already); a different spec is
 * `JobSpecConflictError`, another user's id `JobOwnershipError`.
 *
 * @throws {JobSpecError} every problem of the request (field + rule).
 * @throws {InsufficientCreditsError} the user cannot pay for the whole job; nothing written.
 */
export async function acceptJob(deps: AcceptJobDeps, caller: Caller, body: unknown, options: AcceptJobOptions): Promise<AcceptedJob> {
  const request = await readJobRequest(body, caller, options.limits);
  const { jobId, created } = await submitSpec(deps, request.spec, { inputFiles: request.inputFiles, pricePerImage: options.pricePerImage, allowLocalWebhooks: options.allowLocalWebhooks });
  const status = created ? 'queued' : await retryTransient(() => getJobStatus(deps.database, jobId));
  if (status !== null && !FINAL_JOB_STATUSES.includes(status)) await deps.dispatcher.dispatch(jobId, { priority: request.spec.priority ?? 0 });
  return { created, summary: await retryTransient(() => jobSummary(deps.database, jobId)) };
}
