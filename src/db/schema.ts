/**
 * Kysely table types. Column names are snake_case, as in SQL; the operations in
 * `ops/` turn rows into camelCase objects.
 *
 * Numbers: counts (images, slots, attempts, bytes) are `integer` columns. Credit
 * amounts and balances (`credit_accounts.balance`/`reserved`, `credit_ledger.amount`,
 * `jobs.price_per_image` and `credits_*`) are `bigint` (migration 0004), kept at most
 * 2^53-1 by the application (`MAX_CREDITS`). Both drivers read every `bigint` as a JS
 * number (`parseInt8` in `database.ts`; `pg` alone returns a string, PGlite a BigInt
 * above 2^53-1). Aggregates are cast in SQL: counts to `int`, credit sums to `bigint`
 * (a `bigint` sum is `numeric`, a string on both drivers), ratios to `float8`.
 * JSON: values are written as `cast($1::text as jsonb)` (see `internal/json.ts`) because
 * `pg` and PGlite serialise a JS value bound to a jsonb parameter differently.
 */
import type { ColumnType, Generated } from 'kysely';
import type { JobSpec } from '../domain/job-spec.js';

/** A jsonb column: always written through `jsonb(value)` (internal/json.ts), read back parsed. */
export type Json<T> = ColumnType<T, T, T>;
/** A `timestamptz` column filled by `now()`. */
export type Timestamp = ColumnType<Date, Date | string | undefined, Date | string>;
export type NullableTimestamp = ColumnType<Date | null, Date | string | null | undefined, Date | string | null>;

export const JOB_STATUSES = ['queued', 'running', 'completed', 'partial', 'failed', 'cancelled'] as const;
export type JobRowStatus = (typeof JOB_STATUSES)[number];
/** Statuses after which nothing changes any more. */
export const FINAL_JOB_STATUSES: readonly JobRowStatus[] = ['completed', 'partial', 'failed', 'cancelled'];

export const STAGE_STATUSES = ['pending', 'running', 'completed', 'short'] as const;
export type StageRowStatus = (typeof STAGE_STATUSES)[number];

/** `abandoned`: the process running the attempt died or shut down first; it costs no budget. */
export const ATTEMPT_OUTCOMES = ['started', 'delivered', 'failed', 'abandoned'] as const;
export type AttemptOutcome = (typeof ATTEMPT_OUTCOMES)[number];

/** A provider batch's state (migration 0012): `submitting` until the create answered, then the provider's. */
export const BATCH_STATES = ['submitting', 'pending', 'running', 'succeeded', 'failed', 'cancelled', 'expired'] as const;
export type BatchRowState = (typeof BATCH_STATES)[number];
/** States after which the provider changes nothing any more (`ended_at` is set). */
export const TERMINAL_BATCH_STATES: readonly BatchRowState[] = ['succeeded', 'failed', 'cancelled', 'expired'];

export const LEDGER_KINDS = ['grant', 'reserve', 'capture', 'release'] as const;
export type LedgerKind = (typeof LEDGER_KINDS)[number];

export interface CreditAccountsTable {
  user_id: string;
  /** Spendable credits. `check (balance >= 0)`. */
  balance: Generated<number>;
  /** Credits held by reservations of running jobs. `check (reserved >= 0)`. */
  reserved: Generated<number>;
  updated_at: Generated<Date>;
}

export interface CreditLedgerTable {
  /** bigint identity: only ordered by, never selected. */
  id: Generated<string>;
  user_id: string;
  kind: LedgerKind;
  amount: number;
  job_id: string | null;
  attach_id: string | null;
  /** The job's reservation round (`jobs.reopened` when written): one reserve and one release per job and round. */
  round: Generated<number>;
  created_at: Generated<Date>;
}

export interface AttachmentsTable {
  id: string;
  user_id: string;
  storage_key: string;
  content_type: string;
  byte_size: number;
  width: number | null;
  height: number | null;
  /** Set for generated images: the slot this attachment fills (unique). */
  job_id: string | null;
  stage_index: number | null;
  slot_index: number | null;
  attempt: number | null;
  /** Insertion order (bigint identity): delivery order within a job. Only ordered by, never selected. */
  seq: Generated<string>;
  created_at: Generated<Date>;
}

export interface JobsTable {
  id: string;
  user_id: string;
  production_id: string | null;
  spec: Json<JobSpec>;
  price_per_image: number;
  status: JobRowStatus;
  total: number;
  /** Authoritative count, bumped inside each delivery transaction. */
  delivered: Generated<number>;
  /** Seed-compatible progress (coalesced writes): count and attach ids in delivery order. */
  progress_count: Generated<number>;
  progress_attach_ids: ColumnType<string[], string[] | undefined, string[]>;
  progress_updated_at: NullableTimestamp;
  /** Final merged attach ids, stage order then slot order; null until the job ends. */
  result_attach_ids: ColumnType<string[] | null, string[] | null | undefined, string[] | null>;
  error: string | null;
  cancel_requested: Generated<boolean>;
  credits_reserved: number;
  credits_captured: Generated<number>;
  credits_released: Generated<number>;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  started_at: NullableTimestamp;
  finished_at: NullableTimestamp;
  /** Which process runs the job (`host:pid:uuid`) and until when; see `claimJobLease`. */
  lease_owner: ColumnType<string | null, string | null | undefined, string | null>;
  lease_until: NullableTimestamp;
  /** Higher runs first (migration 0005). */
  priority: Generated<number>;
  /** Runs in a row that died without delivering anything (crash-loop guard). */
  crash_resumes: Generated<number>;
  /** `delivered` when the last run started; null before the first run. */
  delivered_at_run_start: number | null;
  /** Times the job was reopened after ending short only because of abandoned attempts. */
  reopened: Generated<number>;
  /** The `seq` of the job's last event in `job_events` (0: none yet); migration 0006. */
  event_seq: Generated<number>;
}

export interface StagesTable {
  job_id: string;
  stage_index: number;
  prompt: string;
  aspect_ratio: string;
  quantity: number;
  input_attach_id: string | null;
  delivered: Generated<number>;
  status: Generated<StageRowStatus>;
  shortfall_count: number | null;
  shortfall_reason: string | null;
  shortfall_error_class: string | null;
}

export interface SlotsTable {
  job_id: string;
  stage_index: number;
  slot_index: number;
  /** The attachment that filled the slot (unique), null while owed. */
  attach_id: string | null;
  /** Highest attempt number started for this slot: the budget survives restarts. */
  attempts_used: Generated<number>;
  filled_at: NullableTimestamp;
}

export interface AttemptsTable {
  job_id: string;
  stage_index: number;
  slot_index: number;
  attempt: number;
  outcome: AttemptOutcome;
  started_at: Generated<Date>;
  finished_at: NullableTimestamp;
  error_class: string | null;
  http_status: number | null;
  message: string | null;
  latency_ms: number | null;
  prompt_tokens: number | null;
  output_tokens: number | null;
  total_tokens: number | null;
  /** Migration 0010: thinking tokens, images in the answer, the model priced, the estimated cost (USD, float8). */
  thoughts_tokens: ColumnType<number | null, number | null | undefined, number | null>;
  image_count: ColumnType<number | null, number | null | undefined, number | null>;
  model: ColumnType<string | null, string | null | undefined, string | null>;
  /** The answer's estimated cost; null: no answer (or the model has no price). */
  cost_usd: ColumnType<number | null, number | null | undefined, number | null>;
  /** A timed-out call's possible bill (one image's price); null or 0 otherwise. */
  possibly_billed_usd: ColumnType<number | null, number | null | undefined, number | null>;
}

export interface DatabaseSchema {
  credit_accounts: CreditAccountsTable;
  credit_ledger: CreditLedgerTable;
  attachments: AttachmentsTable;
  jobs: JobsTable;
  stages: StagesTable;
  slots: SlotsTable;
  attempts: AttemptsTable;
  workers: WorkersTable;
  provider_limits: ProviderLimitsTable;
  job_events: JobEventsTable;
  webhook_secrets: WebhookSecretsTable;
  webhook_deliveries: WebhookDeliveriesTable;
  webhook_attempts: WebhookAttemptsTable;
  service_secrets: ServiceSecretsTable;
  batches: BatchesTable;
}

/** One attempt of a batch round, as `batches.requests` stores it. */
export interface BatchRequestRow {
  slot: number;
  attempt: number;
}

/**
 * One provider batch of a batch stage, per round (migration 0012): written with its
 * attempts before the provider's create call, so a run that takes the job over polls it.
 */
export interface BatchesTable {
  job_id: string;
  stage_index: number;
  /** 1-based: round 2 carries the replacements of round 1's failures. */
  round: number;
  /** Our key for the batch at the provider (unique), chosen before the create. */
  display_name: string;
  /** The provider's batch name; null until the create answered. */
  name: ColumnType<string | null, string | null | undefined, string | null>;
  state: Generated<BatchRowState>;
  error: ColumnType<string | null, string | null | undefined, string | null>;
  /** The round's attempts, in the order sent; never empty. */
  requests: Json<BatchRequestRow[]>;
  created_at: Generated<Date>;
  /** Set (once) when the state became terminal. */
  ended_at: NullableTimestamp;
}

/**
 * A job's event log (migration 0006): `seq` 1, 2, 3, ... per job in commit order, no
 * holes; `payload` is the event as notified (`NotifiedEvent`), checked when read back.
 */
export interface JobEventsTable {
  job_id: string;
  seq: number;
  type: string;
  /** Written through `jsonb(event)`; read back unchecked, so `readJobEvents` checks it. */
  payload: Json<unknown>;
  created_at: Generated<Date>;
}

/** A worker process of the fleet, renewed with its heartbeat (migration 0005). */
export interface WorkersTable {
  /** The worker's lease owner id, `name:pid:uuid`: the same id holds its jobs' leases. */
  id: string;
  /** The host name, or `IMAGEGEN_WORKER_NAME`. */
  name: string;
  pid: number;
  started_at: Generated<Date>;
  heartbeat_at: Generated<Date>;
  /** After this the worker is dead: its jobs and its share of the provider limit are free. */
  alive_until: Date;
  /** The provider key's hash (never the key); null = no shared provider limit. */
  provider_key: string | null;
  /** Its configured attempt ceiling (`IMAGEGEN_CONCURRENCY`). */
  concurrency: number;
  /** Its `IMAGEGEN_PROVIDER_MAX_INFLIGHT`, or null; the smallest of the live workers' caps the fleet. */
  provider_ceiling: number | null;
  /** Attempts it wants to run now (in flight + waiting, at most `concurrency`). */
  demand: Generated<number>;
  /** Permits of the shared provider limit it may hold (never below what it has in flight). */
  held: Generated<number>;
  in_flight: Generated<number>;
}

/** The fleet's adaptive limit for one provider key (migration 0005). */
export interface ProviderLimitsTable {
  /** The provider key's hash. */
  key: string;
  /** Calls the whole fleet may have in flight now (AIMD: halved on a 429, +1 per `current_limit` successes). */
  current_limit: number;
  /** Successes since the last change of the limit. */
  successes: Generated<number>;
  /** Bumped at each change; a 429 cuts the limit only once per epoch. */
  epoch: Generated<number>;
  /** The limit at which the last 429 came (0 = none): growth above it is slow. */
  last_cut_at: Generated<number>;
  /** How many times a 429 cut the limit. */
  cuts: Generated<number>;
  updated_at: Generated<Date>;
}

/** Secrets the service keeps for itself, by name (migration 0008): the live page's link key. */
export interface ServiceSecretsTable {
  name: string;
  secret: string;
  created_at: Generated<Date>;
}

/** A user's webhook signing secret (migration 0007), `whsec_<base64>`. */
export interface WebhookSecretsTable {
  user_id: string;
  secret: string;
  created_at: Generated<Date>;
}

export const WEBHOOK_DELIVERY_STATUSES = ['pending', 'delivered', 'failed'] as const;
export type WebhookDeliveryStatus = (typeof WEBHOOK_DELIVERY_STATUSES)[number];

/** The webhook outbox (migration 0007): one row per reported event, written with it. */
export interface WebhookDeliveriesTable {
  /** `msg_<jobId>_<seq>`: the `webhook-id` header, the same on every retry. */
  id: string;
  job_id: string;
  /** The reported event's `job_events.seq`. */
  seq: number;
  user_id: string;
  event_type: string;
  url: string;
  /** The logged event (`NotifiedEvent`) it reports. */
  payload: Json<unknown>;
  status: Generated<WebhookDeliveryStatus>;
  attempts: Generated<number>;
  retry_attempt: Generated<number>;
  next_attempt_at: Generated<Date>;
  claimed_by: string | null;
  window_from: Generated<Date>;
  created_at: Generated<Date>;
  finished_at: NullableTimestamp;
}

/** One attempt of a webhook delivery: an HTTP status, or the kind of error. */
export interface WebhookAttemptsTable {
  delivery_id: string;
  attempt: number;
  at: Timestamp;
  duration_ms: number;
  status_code: number | null;
  error: string | null;
}
