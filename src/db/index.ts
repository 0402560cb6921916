/** The database layer: connection, schema, migrations and one operation per file. */
export { openDatabase, migrate, type Database, type DatabaseConfig, type OpenDatabaseOptions } from './database.js';
export type { DatabaseSchema, JobRowStatus, StageRowStatus, AttemptOutcome, LedgerKind } from './schema.js';
export { JOB_STATUSES, FINAL_JOB_STATUSES } from './schema.js';
export { MIGRATIONS } from './migrations/index.js';
export {
  InsufficientCreditsError,
  CreditOverflowError,
  InputAttachmentError,
  JobOwnershipError,
  JobNotFoundError,
  JobStateError,
  MigrationError,
} from './errors.js';
export {
  PROGRESS_CHANNEL,
  MAX_NOTIFY_PAYLOAD_BYTES,
  toNotifiedEvent,
  encodeNotification,
  decodeNotification,
  type NotifiedEvent,
} from './notifications.js';
export { grantCredits } from './ops/grant-credits.js';
export { getBalance } from './ops/get-balance.js';
export { replayLedger } from './ops/replay-ledger.js';
export { createAttachment, type NewAttachment } from './ops/create-attachment.js';
export { getAttachment, type AttachmentRow } from './ops/get-attachment.js';
export { submitJob, type SubmitJobOptions, type SubmitJobResult } from './ops/submit-job.js';
export { loadJob, type LoadedJob } from './ops/load-job.js';
export { markJobRunning } from './ops/mark-job-running.js';
export { beginRun, type BeganRun } from './ops/begin-run.js';
export { reopenJob, type ReopenedJob } from './ops/reopen-job.js';
export { startAttempt, type StartAttemptOptions } from './ops/start-attempt.js';
export { finishAttempt, type FinishAttemptOptions } from './ops/finish-attempt.js';
export { deliverSlot, type DeliverSlotOptions } from './ops/deliver-slot.js';
export { finishJob, type FinishJobOptions, type FinishedCredits } from './ops/finish-job.js';
export { requestCancel, isCancelRequested } from './ops/request-cancel.js';
export { listDeliveredStorageKeys } from './ops/list-delivered-storage-keys.js';
export { jobStats, type JobStats, type JobStatsOptions } from './ops/job-stats.js';
export { appendProgress, getProgress } from './ops/append-progress.js';
export { readJobResult, type StoredJobResult } from './ops/read-job-result.js';
export { findAttachmentByKey } from './ops/find-attachment-by-key.js';
export { suspendJob } from './ops/suspend-job.js';
export { claimJobLease, renewJobLease, releaseJobLease, newLeaseOwner, JobLeasedError } from './ops/job-lease.js';
export { lockDataDir, DataDirLockedError } from './data-dir-lock.js';
