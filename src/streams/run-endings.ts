import { defer, from, map, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import type { JobFinishedEvent, PipelineEvent } from '../domain/events.js';
import { endedResult } from '../domain/result.js';
import { JobNotFoundError, finishJob, readJobResult, retryTransient, suspendJob, type Database, type LoadedJob } from '../db/index.js';
import type { ObjectStore } from '../sinks/object-store.js';
import { sweepOrphans } from '../sinks/orphan-sweep.js';
import type { JobLease } from './job-lease-scope.js';

/** The job a run ends, and the parts its end writes to. */
export interface RunEndContext {
  readonly database: Database;
  readonly store: ObjectStore;
  /** A logger that names the job. */
  readonly logger: Logger | undefined;
  readonly jobId: string;
}

/**
 * Finishes a run that reached `job:finished`: `finishJob` commits the status and the
 * merged ids and releases the unused reservation (exactly once), the orphans its attempts
 * left are swept (a failure only warns), then the lease is given back. The caller emits
 * `job:finished` after this resolves, so it is never seen before the commit.
 *
 * ```
 * finishJob ──c|  sweep ──|  release ──|  → job:finished
 * ```
 */
export async function finishRun(run: RunEndContext, lease: JobLease, event: JobFinishedEvent): Promise<void> {
  const { database, jobId, logger } = run;
  const credits = await retryTransient(() => finishJob(database, jobId, event.result));
  await sweepOrphans(run, jobId, 'warn');
  await lease.release();
  logger?.info({ status: event.status, delivered: event.result.deliveredImages, total: event.result.totalImages, credits }, 'job finished');
}

/**
 * Hands back a run that was stopped (shutdown, lost lease) before its job completed:
 * the job goes back to `queued` for the next runner (`suspendJob`), only while this run
 * still holds the lease (another runner that took it owns the job now), then the lease
 * is given back. Nothing is finished and no `job:finished` is emitted.
 *
 * ```
 * still held? ──yes─► suspendJob ──|  release ──|
 *             ──no──────────────────  release ──|
 * ```
 */
export async function handBackRun(run: RunEndContext, lease: JobLease, event: JobFinishedEvent): Promise<void> {
  const { database, jobId, logger } = run;
  if (await lease.stillHeld()) await retryTransient(() => suspendJob(database, jobId));
  await lease.release();
  logger?.info({ delivered: event.result.deliveredImages }, 'job handed back for resume');
}

/**
 * Ends a job whose runs died `crashResumes` times in a row without delivering: every
 * short stage ends with reason `crash_loop`, the unused reservation is released, the
 * lease given back; emits the job's `job:finished` after that committed.
 */
export function endCrashLoop(run: RunEndContext, lease: JobLease, job: LoadedJob, crashResumes: number): Observable<PipelineEvent> {
  return defer(async () => {
    const { database, jobId, logger } = run;
    const result = endedResult(
      jobId,
      job.spec.stages.map((stage) => ({ index: stage.index, quantity: stage.quantity, attachIds: (job.stages[stage.index] ?? []).map((slot) => slot.attachId) })),
      { reason: 'crash_loop', errorClass: null },
    );
    const error = `crash_loop: ${crashResumes} runs in a row died without delivering anything`;
    logger?.error({ crashResumes, delivered: result.deliveredImages, total: result.totalImages }, 'crash loop: the job ends instead of running again');
    await retryTransient(() => finishJob(database, jobId, result, { error }));
    await lease.release();
    const event: JobFinishedEvent = { type: 'job:finished', jobId, at: Date.now(), status: result.status, attachIds: result.attachIds, result };
    return event;
  });
}

/** `job:finished` of a job that already ended, read back from the database (no lease, no provider call). */
export function replayFinished({ database, jobId }: Pick<RunEndContext, 'database' | 'jobId'>): Observable<PipelineEvent> {
  return from(retryTransient(() => readJobResult(database, jobId))).pipe(
    map((stored): JobFinishedEvent => {
      if (!stored) throw new JobNotFoundError(jobId);
      return { type: 'job:finished', jobId, at: Date.now(), status: stored.result.status, attachIds: stored.result.attachIds, result: stored.result };
    }),
  );
}
