import type { ErrorClass } from '../domain/error-class.js';

/**
 * The failure classes that stop the whole job, not just the stage that met them: no
 * request with this key (`auth`) or this quota (`quota_exhausted`, a server delay
 * above `backoff.maxRetryAfterMs`) can succeed soon, in any stage. Both are
 * non-retryable (`RETRYABLE` in `domain/error-class.ts`); this list says how far they reach.
 */
export const JOB_WIDE_ERROR_CLASSES: readonly ErrorClass[] = Object.freeze(['auth', 'quota_exhausted']);

/** Whether a failure of this class halts every stage of the job (the ledger and `JobControl` both ask). */
export function haltsJob(errorClass: ErrorClass): boolean {
  return JOB_WIDE_ERROR_CLASSES.includes(errorClass);
}
