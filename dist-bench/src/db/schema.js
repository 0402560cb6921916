export const JOB_STATUSES = ['queued', 'running', 'completed', 'partial', 'failed', 'cancelled'];
/** Statuses after which nothing changes any more. */
export const FINAL_JOB_STATUSES = ['completed', 'partial', 'failed', 'cancelled'];
export const STAGE_STATUSES = ['pending', 'running', 'completed', 'short'];
export const ATTEMPT_OUTCOMES = ['started', 'delivered', 'failed'];
export const LEDGER_KINDS = ['grant', 'reserve', 'capture', 'release'];
