/**
 * The database layer's one door: code outside `src/db` imports from here only
 * (test/architecture.test.ts checks it). Behind it: the connection, the schema and
 * migrations, one operation per file in `ops/` (each says why it locks the way it
 * does), and `internal/` helpers no caller needs.
 */

/** Opening a database (PGlite or PostgreSQL, migrations at open) and the data folder lock PGlite needs. */
export { openDatabase, migrate, type Database, type DatabaseConfig, type OpenDatabaseOptions } from './database.js';
export { MIGRATIONS } from './migrations/index.js';
export { lockDataDir } from './data-dir-lock.js';

/** Row types and the closed sets of stored statuses. */
export type { DatabaseSchema, JobRowStatus, StageRowStatus, AttemptOutcome, LedgerKind } from './schema.js';
export { JOB_STATUSES, FINAL_JOB_STATUSES } from './schema.js';

/** Every refusal the database layer throws on purpose. */
export {
  InsufficientCreditsError,
  CreditOverflowError,
  InputAttachmentError,
  JobOwnershipError,
  JobNotFoundError,
  JobStateError,
  MigrationError,
  JobLeasedError,
  LeaseLostError,
  DataDirLockedError,
  InvalidJobEventError,
} from './errors.js';

/** Running an idempotent operation again after a lost connection; telling a lost connection from a wrong query. */
export { retryTransient, isTransientDatabaseError, isConnectionError } from './internal/sql-errors.js';

/** Progress across processes: the NOTIFY channel and its checked payloads. */
export {
  PROGRESS_CHANNEL,
  MAX_NOTIFY_PAYLOAD_BYTES,
  toNotifiedEvent,
  encodeNotification,
  decodeNotification,
  type NotifiedEvent,
  type JobStartedNotification,
  type AttemptStartedNotification,
  type AttemptFailedNotification,
  type SlotDeliveredNotification,
  type StageCompletedNotification,
  type StageShortNotification,
  type JobFinishedNotification,
  type JobCancelRequestedNotification,
  attemptFailedNotification,
  JOB_EVENTS_CHANNEL,
  decodeJobEventsAppended,
  type JobEventsAppended,
} from './notifications.js';

/** Money: grants, balances and the ledger that replays to them. */
export { grantCredits } from './ops/grant-credits.js';
export { getBalance } from './ops/get-balance.js';
export { replayLedger } from './ops/replay-ledger.js';

/** Attach records (input images and delivered images). */
export { createAttachment, type NewAttachment } from './ops/create-attachment.js';
export { getAttachment, type AttachmentRow } from './ops/get-attachment.js';
export { findAttachmentByKey } from './ops/find-attachment-by-key.js';

/** A job's life: submit (reserve), run under a lease, resume or reopen, cancel, finish (release). */
export { submitJob, type SubmitJobOptions, type SubmitJobResult } from './ops/submit-job.js';
export { getJobSpec, type StoredJobSpec } from './ops/get-job-spec.js';
export { getJobStatus } from './ops/get-job-status.js';
export { loadJob, type LoadedJob } from './ops/load-job.js';
export { markJobRunning } from './ops/mark-job-running.js';
export { claimJobLease, renewJobLease, releaseJobLease, newLeaseOwner, isDeadLocalOwner } from './ops/job-lease.js';

/** The fleet: takeover of jobs nobody runs, live workers, one provider limit shared by all. */
export { claimUnattendedJob, type UnattendedJob } from './ops/claim-unattended-job.js';
export { registerWorker, removeWorker, listWorkers, findJobRunner, type NewWorker, type WorkerInfo, type JobRunner } from './ops/workers.js';
export { rebalanceProviderShare, type ProviderShareReport, type ProviderShare } from './ops/rebalance-provider-share.js';
export { beginRun, type BeganRun } from './ops/begin-run.js';
export { reopenJob, type ReopenedJob } from './ops/reopen-job.js';
export { suspendJob } from './ops/suspend-job.js';
export { requestCancel, isCancelRequested } from './ops/request-cancel.js';
export { finishJob, type FinishJobOptions, type FinishedCredits } from './ops/finish-job.js';

/** Attempts and deliveries: the attempt log and the one-transaction delivery. */
export { startAttempt, startAttempts, type StartAttemptOptions } from './ops/start-attempt.js';
export { finishAttempt, finishAttempts, type FinishAttemptOptions } from './ops/finish-attempt.js';
export { deliverSlot, type DeliverSlotOptions } from './ops/deliver-slot.js';
export { listDeliveredStorageKeys } from './ops/list-delivered-storage-keys.js';

/** Batch mode: a stage's provider batches, one per round, stored with their attempts before the create call (takeover polls them). */
export {
  recordBatchRound,
  setBatchName,
  recordBatchState,
  openBatches,
  listBatches,
  type StoredBatch,
  type StoredBatchRequest,
  type StoredBatchState,
  type BatchRoundKey,
  type NewBatchRound,
  type BatchSummary,
} from './ops/batches.js';

/** Reading a job back: progress, result, a consistent snapshot, attempt statistics. */
export { appendProgress, getProgress } from './ops/append-progress.js';
export { readJobResult, type StoredJobResult } from './ops/read-job-result.js';
export { readJobSnapshot, type StoredJobSnapshot } from './ops/read-job-snapshot.js';
export { jobStats, type JobStats, type JobStatsOptions } from './ops/job-stats.js';
export { lastFailureMessages, type LastFailureMessage } from './ops/last-failure-messages.js';
export { countJobsByStatus, type JobStatusCount } from './ops/count-jobs-by-status.js';

/** A job's event log: every logged event in commit order, numbered per job with no holes (`seq`), for readers that resume. */
export { readJobEvents, DEFAULT_JOB_EVENTS_PAGE, type JobEventEnvelope, type ReadJobEventsOptions } from './ops/read-job-events.js';

/** The service (src/http): a user's jobs page by page, a slot's image, the event log's head, a readiness ping. */
export { listUserJobs, type UserJobRow, type UserJobsPosition, type ListUserJobsOptions } from './ops/list-user-jobs.js';
export { getSlotAttachment } from './ops/get-slot-attachment.js';
export { getJobEventSeq } from './ops/get-job-event-seq.js';
export { listDeliveredSlots, type DeliveredSlot } from './ops/list-delivered-slots.js';
export { serviceSecret } from './ops/service-secret.js';
export { notifyEach } from './ops/notify-each.js';
export { pingDatabase } from './ops/ping-database.js';

/** Webhooks: the outbox (written by the event log), per-user signing secrets, claims, attempts, redelivery. */
export { WEBHOOK_DELIVERIES_CHANNEL, webhookMessageId } from './internal/webhook-outbox.js';
export { getWebhookSecret } from './ops/webhook-secret.js';
export { claimWebhookDeliveries, type ClaimedWebhookDelivery } from './ops/claim-webhook-deliveries.js';
export { recordWebhookAttempt, type RecordWebhookAttemptOptions } from './ops/record-webhook-attempt.js';
export { releaseWebhookClaims } from './ops/release-webhook-claims.js';
export { listWebhookDeliveries, type WebhookDeliveryInfo, type WebhookAttemptInfo } from './ops/list-webhook-deliveries.js';
export { redeliverWebhooks } from './ops/redeliver-webhooks.js';
export { countUnattemptedWebhooks } from './ops/count-unattempted-webhooks.js';
export type { WebhookDeliveryStatus } from './schema.js';
