import { JobNotFoundError, getJobSpec, jobStats, lastFailureMessages, listBatches, readJobResult, retryTransient, type Database, type StoredBatchState } from '../db/index.js';
import type { JobStatus } from '../domain/result.js';
import { visibleJob, type Caller } from './caller.js';

/**
 * The summary of a job: the CLI's `--json` contract (`run`, `status`) and the service's
 * job object (`GET /v1/jobs/:id`), one shape for both.
 */
export interface JobSummary {
  readonly jobId: string;
  /** The job's status; `queued`/`running` for a job that has not ended. */
  readonly status: JobStatus | 'queued' | 'running';
  readonly totalImages: number;
  readonly deliveredImages: number;
  /**
   * `batch` when the job's spec says so (its stages default to the batch API); absent for an
   * interactive job, so the summary of an interactive job is as it always was. A stage's own
   * mode is on the stage.
   */
  readonly mode?: 'batch';
  /** Stage order, then slot order. */
  readonly attachIds: readonly string[];
  readonly stages: readonly {
    readonly index: number;
    readonly quantity: number;
    /** `batch` for a batch stage (absent: interactive). */
    readonly mode?: 'batch';
    /** Batch stages only: each round's batch, in order (round 2 carries round 1's failures). */
    readonly rounds?: readonly BatchRoundSummary[];
    readonly delivered: number;
    readonly attachIds: readonly string[];
    /**
     * `detail`: the message of the latest failure of `errorClass` in this stage (in the job,
     * for a stage another stage's failure aborted), e.g. which quota ran out; null when none.
     */
    readonly shortfall: null | { readonly count: number; readonly reason: string; readonly errorClass: string | null; readonly detail: string | null };
  }[];
  /** `abandoned`: attempts cut off by a run that died or shut down (no budget charged, not failures). */
  readonly attempts: { readonly total: number; readonly failed: number; readonly abandoned: number; readonly byClass: Readonly<Record<string, number>> };
  readonly credits: { readonly reserved: number; readonly captured: number; readonly released: number };
  /**
   * Estimated provider cost, USD (the price table's list prices: an estimate, not an invoice).
   * `estimatedUsd`: every answer, failed ones included; `perDeliveredImageUsd`: that over the
   * delivered images (null: none); `wastedUsd`: answers that did not become a delivered image;
   * `possiblyBilledUsd`/`Count`: timed-out calls the provider may still bill (one image each),
   * not in `estimatedUsd`; `maxCostUsd`: the job's cap (null: none).
   */
  readonly cost: {
    readonly estimatedUsd: number;
    readonly perDeliveredImageUsd: number | null;
    readonly wastedUsd: number;
    readonly possiblyBilledUsd: number;
    readonly possiblyBilledCount: number;
    readonly maxCostUsd: number | null;
  };
}

/** One round of a batch stage, as the summary shows it. */
export interface BatchRoundSummary {
  readonly round: number;
  /** The provider's batch name (null: the create never answered). */
  readonly batch: string | null;
  readonly state: StoredBatchState;
  /** Requests sent (one attempt each), and how they ended so far. */
  readonly requests: number;
  readonly delivered: number;
  readonly failed: number;
  /** Why the batch failed, expired or was cancelled, as the provider said (null: none). */
  readonly error: string | null;
}

/** Reads a job's summary from the database (the same for `run --json` and `status --json`). */
export async function jobSummary(database: Database, jobId: string): Promise<JobSummary> {
  const stored = await readJobResult(database, jobId);
  if (!stored) throw new JobNotFoundError(jobId);
  const stats = await jobStats(database, { jobId });
  const spec = await getJobSpec(database, jobId);
  const ended = ['completed', 'partial', 'failed', 'cancelled'].includes(stored.rowStatus);
  const { result } = stored;
  const failures = result.stages.some((s) => s.shortfall?.errorClass != null) ? await lastFailureMessages(database, jobId) : [];
  const stageSpecs = spec?.spec.stages ?? [];
  const batchRounds = stageSpecs.some((s) => s.mode === 'batch') ? await listBatches(database, jobId) : [];
  const roundsOf = (stageIndex: number): BatchRoundSummary[] =>
    batchRounds
      .filter((b) => b.stageIndex === stageIndex)
      .map((b) => ({ round: b.round, batch: b.name, state: b.state, requests: b.requests.length, delivered: b.delivered, failed: b.failed, error: b.error }));
  const detailOf = (stageIndex: number, errorClass: string | null): string | null =>
    errorClass === null ? null : (failures.find((f) => f.stageIndex === stageIndex && f.errorClass === errorClass) ?? failures.find((f) => f.errorClass === errorClass))?.message ?? null;
  return {
    jobId,
    status: ended ? result.status : (stored.rowStatus as 'queued' | 'running'),
    totalImages: result.totalImages,
    deliveredImages: result.deliveredImages,
    ...(spec?.spec.mode === 'batch' ? { mode: 'batch' as const } : {}),
    attachIds: result.attachIds,
    stages: result.stages.map((s) => ({
      index: s.index,
      quantity: s.quantity,
      ...(stageSpecs[s.index]?.mode === 'batch' ? { mode: 'batch' as const } : {}),
      delivered: s.delivered,
      attachIds: s.attachIds,
      shortfall:
        s.shortfall === null
          ? null
          : { count: s.shortfall.count, reason: ended ? s.shortfall.reason : 'pending', errorClass: s.shortfall.errorClass, detail: detailOf(s.index, s.shortfall.errorClass) },
      ...(stageSpecs[s.index]?.mode === 'batch' ? { rounds: roundsOf(s.index) } : {}),
    })),
    attempts: { total: stats.attempts, failed: stats.failed, abandoned: stats.abandoned, byClass: stats.byClass },
    credits: stored.credits,
    cost: {
      estimatedUsd: stats.costUsd,
      perDeliveredImageUsd: result.deliveredImages > 0 ? stats.costUsd / result.deliveredImages : null,
      wastedUsd: stats.wastedUsd,
      possiblyBilledUsd: stats.possiblyBilled.usd,
      possiblyBilledCount: stats.possiblyBilled.count,
      maxCostUsd: spec?.spec.maxCostUsd ?? null,
    },
  };
}

/**
 * The summary of the caller's job: `GET /v1/jobs/:id`.
 *
 * @throws {JobNotFoundError} no such job, or another user's.
 */
export async function visibleJobSummary(database: Database, caller: Caller, jobId: string): Promise<JobSummary> {
  await visibleJob(database, caller, jobId);
  return retryTransient(() => jobSummary(database, jobId));
}
