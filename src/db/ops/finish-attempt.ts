import { sql, type Kysely } from 'kysely';
import type { AttemptCost } from '../../domain/events.js';
import type { TokenUsage } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';
import { jsonb } from '../internal/json.js';
import { JOB_EVENTS_CHANNEL, jobEventsAppendedPrefix, type AttemptFailedNotification } from '../notifications.js';
import { FINAL_JOB_STATUSES, type DatabaseSchema } from '../schema.js';

export interface FinishAttemptOptions {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly slotIndex: number;
  readonly attempt: number;
  readonly outcome: 'delivered' | 'failed' | 'abandoned';
  readonly errorClass: string | null;
  readonly httpStatus: number | null;
  readonly message: string | null;
  readonly latencyMs: number;
  /** The answer's usage, failed answers included (they are billed). */
  readonly usage: TokenUsage | null;
  /** What the attempt cost (the engine's estimate from the price table); absent: not priced. */
  readonly cost?: AttemptCost | undefined;
  /**
   * The failure as notified (`attemptFailedNotification` of the engine's event), appended
   * to the job's event log with the failure. Only with `outcome: 'failed'` and for this
   * attempt: an abandoned attempt is no failure and has no event.
   */
  readonly event?: AttemptFailedNotification | undefined;
}

/** The final job statuses as `fail_attempt` takes them (built once: a failed call's path). */
const FINAL_STATUSES = jsonb(FINAL_JOB_STATUSES);

/** Messages are for people reading the attempt log, not for storage of whole responses. */
const MAX_MESSAGE_CHARS = 2000;

/**
 * Records how an attempt ended (outcome, error class, HTTP status, latency,
 * token usage, the model and estimated cost). An upsert: it works even if `startAttempt` was lost, and a
 * repeated call overwrites with the same facts. With `event`, the failure is also
 * appended to the job's event log, in the same transaction and once per attempt
 * (a repeated call finds the row already `failed` and appends nothing). A job that
 * has ended gets the row but no event: its log ends with `job:finished` (a runner
 * that lost its lease may still be writing).
 *
 * Locking: without `event`, one statement on the attempt's row, its own lock only.
 * With `event`, the job row first (`appendJobEvents` numbers the event under it),
 * then the attempt row: the order `beginRun` takes them in (job, then the attempts
 * it abandons), so the two cannot deadlock.
 *
 * Round trips: one. With `event`, the call of `fail_attempt` (migration 0014): the job row
 * `for update`, the attempt row `for update`, the upsert, the event's number, row and NOTIFY
 * (as `appendJobEvents` writes them), run by the server in that order; the call commits on its own.
 */
export async function finishAttempt(database: Database, options: FinishAttemptOptions): Promise<void> {
  const { jobId, stageIndex, slotIndex, attempt, event } = options;
  const row = attemptRow(options);
  if (event !== undefined) {
    if (options.outcome !== 'failed') throw new TypeError(`an attempt:failed event is logged only with outcome failed, not ${options.outcome}`);
    if (event.jobId !== jobId || event.stage !== stageIndex || event.slot !== slotIndex || event.attempt !== attempt) {
      throw new TypeError(`the attempt:failed event is for ${event.jobId}/${event.stage}/${event.slot}#${event.attempt}, not ${jobId}/${stageIndex}/${slotIndex}#${attempt}`);
    }
  }
  if (event === undefined) {
    await upsertAttempts(database.db, [row]);
    return;
  }
  // One round trip (`fail_attempt`, migration 0014): the transaction's statements, run by the
  // server. `attempt:failed` is no webhook event (`webhookEventOf`): no outbox row to write.
  await sql`select fail_attempt(${jsonb({ ...row, finished_at: undefined })}, ${jsonb(event)}, ${FINAL_STATUSES}, ${JOB_EVENTS_CHANNEL}, ${jobEventsAppendedPrefix(jobId)})`.execute(database.db);
}

/**
 * Records how several attempts ended in ONE statement (a multi-row upsert), each as
 * {@link finishAttempt} records it without `event`: the attempt log writes the records that
 * piled up while its previous write ran this way, one statement instead of one each (a
 * delivered image's record is one of the statements per image; BENCHMARKS.md 11D). A record
 * given twice (same job, stage, slot and attempt) is written as its last. Records with an
 * `event` go through {@link finishAttempt} (their failure is appended to the job's log with them).
 *
 * Locking: the attempt rows only, taken in key order (job, stage, slot, attempt); it holds
 * no job row, so it waits for `beginRun` rather than the other way round.
 */
export async function finishAttempts(database: Database, records: readonly FinishAttemptOptions[]): Promise<void> {
  const rows = new Map<string, AttemptRow>();
  for (const record of records) {
    if (record.event !== undefined) throw new TypeError('finishAttempts writes records without an event; a failure with its event goes through finishAttempt');
    rows.set(JSON.stringify([record.jobId, record.stageIndex, record.slotIndex, record.attempt]), attemptRow(record));
  }
  if (rows.size === 0) return;
  const ordered = [...rows.values()].sort(
    (a, b) => (a.job_id < b.job_id ? -1 : a.job_id > b.job_id ? 1 : a.stage_index - b.stage_index || a.slot_index - b.slot_index || a.attempt - b.attempt),
  );
  await upsertAttempts(database.db, ordered);
}

type AttemptRow = ReturnType<typeof attemptRow>;

/** The `attempts` row of a record (the message cut to {@link MAX_MESSAGE_CHARS}, latency rounded, never negative). */
function attemptRow(options: FinishAttemptOptions) {
  assertCount('attempt', options.attempt, 1);
  const usage = options.usage;
  return {
    job_id: options.jobId,
    stage_index: options.stageIndex,
    slot_index: options.slotIndex,
    attempt: options.attempt,
    outcome: options.outcome,
    finished_at: sql<Date>`now()`,
    error_class: options.errorClass,
    http_status: options.httpStatus,
    message: options.message === null ? null : options.message.slice(0, MAX_MESSAGE_CHARS),
    latency_ms: Math.max(0, Math.round(options.latencyMs)),
    prompt_tokens: usage?.promptTokens ?? null,
    output_tokens: usage?.outputTokens ?? null,
    total_tokens: usage?.totalTokens ?? null,
    thoughts_tokens: usage?.thoughtsTokens ?? null,
    image_count: usage?.imageCount ?? null,
    model: options.cost?.model ?? null,
    cost_usd: options.cost?.usd ?? null,
    possibly_billed_usd: options.cost === undefined || options.cost.possiblyBilledUsd === 0 ? null : options.cost.possiblyBilledUsd,
  };
}

/** Inserts the rows, or overwrites the ones that exist (a repeated record writes the same facts). */
function upsertAttempts(db: Kysely<DatabaseSchema>, rows: readonly AttemptRow[]) {
  return db
    .insertInto('attempts')
    .values([...rows])
    .onConflict((oc) =>
      oc.columns(['job_id', 'stage_index', 'slot_index', 'attempt']).doUpdateSet({
        outcome: (eb) => eb.ref('excluded.outcome'),
        finished_at: (eb) => eb.ref('excluded.finished_at'),
        error_class: (eb) => eb.ref('excluded.error_class'),
        http_status: (eb) => eb.ref('excluded.http_status'),
        message: (eb) => eb.ref('excluded.message'),
        latency_ms: (eb) => eb.ref('excluded.latency_ms'),
        prompt_tokens: (eb) => eb.ref('excluded.prompt_tokens'),
        output_tokens: (eb) => eb.ref('excluded.output_tokens'),
        total_tokens: (eb) => eb.ref('excluded.total_tokens'),
        thoughts_tokens: (eb) => eb.ref('excluded.thoughts_tokens'),
        image_count: (eb) => eb.ref('excluded.image_count'),
        model: (eb) => eb.ref('excluded.model'),
        cost_usd: (eb) => eb.ref('excluded.cost_usd'),
        possibly_billed_usd: (eb) => eb.ref('excluded.possibly_billed_usd'),
      }),
    )
    .execute();
}
