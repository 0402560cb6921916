import { sql, type Kysely } from 'kysely';
import type { AttemptCost } from '../../domain/events.js';
import type { TokenUsage } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { appendJobEvents } from '../internal/append-job-events.js';
import { assertCount } from '../internal/assert.js';
import type { AttemptFailedNotification } from '../notifications.js';
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
 */
export async function finishAttempt(database: Database, options: FinishAttemptOptions): Promise<void> {
  const { jobId, stageIndex, slotIndex, attempt, event } = options;
  assertCount('attempt', attempt, 1);
  if (event !== undefined) {
    if (options.outcome !== 'failed') throw new TypeError(`an attempt:failed event is logged only with outcome failed, not ${options.outcome}`);
    if (event.jobId !== jobId || event.stage !== stageIndex || event.slot !== slotIndex || event.attempt !== attempt) {
      throw new TypeError(`the attempt:failed event is for ${event.jobId}/${event.stage}/${event.slot}#${event.attempt}, not ${jobId}/${stageIndex}/${slotIndex}#${attempt}`);
    }
  }
  const latencyMs = Math.max(0, Math.round(options.latencyMs));
  const usage = options.usage;
  const row = {
    job_id: jobId,
    stage_index: stageIndex,
    slot_index: slotIndex,
    attempt,
    outcome: options.outcome,
    finished_at: sql<Date>`now()`,
    error_class: options.errorClass,
    http_status: options.httpStatus,
    message: options.message === null ? null : options.message.slice(0, MAX_MESSAGE_CHARS),
    latency_ms: latencyMs,
    prompt_tokens: usage?.promptTokens ?? null,
    output_tokens: usage?.outputTokens ?? null,
    total_tokens: usage?.totalTokens ?? null,
    thoughts_tokens: usage?.thoughtsTokens ?? null,
    image_count: usage?.imageCount ?? null,
    model: options.cost?.model ?? null,
    cost_usd: options.cost?.usd ?? null,
    possibly_billed_usd: options.cost === undefined || options.cost.possiblyBilledUsd === 0 ? null : options.cost.possiblyBilledUsd,
  };
  const upsert = (db: Kysely<DatabaseSchema>) =>
    db
      .insertInto('attempts')
      .values(row)
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
  if (event === undefined) {
    await upsert(database.db);
    return;
  }
  await database.db.transaction().execute(async (trx) => {
    const job = await trx.selectFrom('jobs').select('status').where('id', '=', jobId).forUpdate().executeTakeFirst();
    const before = await trx
      .selectFrom('attempts')
      .select('outcome')
      .where('job_id', '=', jobId)
      .where('stage_index', '=', stageIndex)
      .where('slot_index', '=', slotIndex)
      .where('attempt', '=', attempt)
      .forUpdate()
      .executeTakeFirst();
    await upsert(trx);
    const ended = job === undefined || FINAL_JOB_STATUSES.includes(job.status);
    if (!ended && before?.outcome !== 'failed') await appendJobEvents(trx, jobId, [event]);
  });
}
