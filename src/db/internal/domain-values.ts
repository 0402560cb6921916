import type { JobStatus, ShortfallReason } from '../../domain/result.js';

/*
 * Runtime checks for the domain's closed string unions that the database reads back
 * (stored rows, NOTIFY payloads). Each set is a `Record` over the union, so adding a
 * member to the domain type without adding it here fails to compile.
 */

const JOB_STATUS: Readonly<Record<JobStatus, true>> = { completed: true, partial: true, failed: true, cancelled: true };

const SHORTFALL_REASON: Readonly<Record<ShortfallReason, true>> = {
  budget_exhausted: true,
  non_retryable: true,
  safety_blocked: true,
  job_aborted: true,
  cancelled: true,
  crash_loop: true,
  cost_cap: true,
};

/** Whether `value` is how a job ended (`completed`, `partial`, `failed`, `cancelled`). */
export function isJobStatus(value: unknown): value is JobStatus {
  return typeof value === 'string' && Object.hasOwn(JOB_STATUS, value);
}

/** Whether `value` is a {@link ShortfallReason}. */
export function isShortfallReason(value: unknown): value is ShortfallReason {
  return typeof value === 'string' && Object.hasOwn(SHORTFALL_REASON, value);
}
