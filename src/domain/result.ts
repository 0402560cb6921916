import type { ErrorClass } from './error-class.js';

/** How a job ended. `completed` only when every stage holds exactly its quantity. */
export type JobStatus = 'completed' | 'partial' | 'failed' | 'cancelled';

/**
 * Why a stage ended short:
 * - `budget_exhausted`: retryable failures used up the slot or stage budget;
 * - `non_retryable`: a failure that another attempt would repeat (`errorClass` says which);
 * - `safety_blocked`: the output safety filter blocked `IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE`
 *   answers in a row (default 3), so the stage stopped paying for more;
 * - `job_aborted`: another stage hit a job-wide failure (`auth`, `quota_exhausted`);
 * - `cancelled`: the job was cancelled or the worker shut down;
 * - `crash_loop`: the job's runs died too many times in a row without delivering
 *   anything (`IMAGEGEN_MAX_CRASH_RESUMES`); the job was ended instead of run again;
 * - `cost_cap`: the next attempt would have passed the job's `maxCostUsd` (estimated from
 *   the price table), so no more were started (`errorClass` null: nothing failed).
 */
export type ShortfallReason = 'budget_exhausted' | 'non_retryable' | 'safety_blocked' | 'job_aborted' | 'cancelled' | 'crash_loop' | 'cost_cap';

export interface Shortfall {
  /** Images missing: `quantity - delivered`. */
  readonly count: number;
  readonly reason: ShortfallReason;
  /** The class of the last failure that led here, if any. */
  readonly errorClass: ErrorClass | null;
}

export interface StageResult {
  readonly index: number;
  readonly quantity: number;
  readonly delivered: number;
  /** Attach ids in slot order (missing slots are skipped). */
  readonly attachIds: readonly string[];
  readonly shortfall: Shortfall | null;
}

export interface JobResult {
  readonly jobId: string;
  readonly status: JobStatus;
  readonly totalImages: number;
  readonly deliveredImages: number;
  /** Stage order, then slot order. */
  readonly attachIds: readonly string[];
  readonly stages: readonly StageResult[];
}

/** The single rule that decides a job's status from its stages. */
export function jobStatusOf(stages: readonly StageResult[], cancelled: boolean): JobStatus {
  if (stages.every((s) => s.delivered === s.quantity && s.shortfall === null)) return 'completed';
  if (cancelled) return 'cancelled';
  return stages.some((s) => s.delivered > 0) ? 'partial' : 'failed';
}

/**
 * The result of a job ended from its stored state rather than by the engine (a crash
 * loop): each stage keeps what it holds, every short stage gets `shortfall`.
 *
 * @param stages per stage, the attach id of each slot (null while owed).
 */
export function endedResult(
  jobId: string,
  stages: readonly { readonly index: number; readonly quantity: number; readonly attachIds: readonly (string | null)[] }[],
  shortfall: Omit<Shortfall, 'count'>,
): JobResult {
  const results: StageResult[] = stages.map((stage) => {
    const attachIds = stage.attachIds.filter((id): id is string => id !== null);
    const missing = stage.quantity - attachIds.length;
    return { index: stage.index, quantity: stage.quantity, delivered: attachIds.length, attachIds, shortfall: missing === 0 ? null : { count: missing, ...shortfall } };
  });
  const attachIds = results.flatMap((s) => s.attachIds);
  return {
    jobId,
    status: jobStatusOf(results, false),
    totalImages: results.reduce((sum, s) => sum + s.quantity, 0),
    deliveredImages: attachIds.length,
    attachIds,
    stages: results,
  };
}
