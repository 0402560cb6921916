import { sql } from 'kysely';
import type { TokenUsage } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';

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
  readonly usage: TokenUsage | null;
}

/** Messages are for people reading the attempt log, not for storage of whole responses. */
const MAX_MESSAGE_CHARS = 2000;

/**
 * Records how an attempt ended (outcome, error class, HTTP status, latency,
 * token usage). An upsert: it works even if `startAttempt` was lost, and a
 * repeated call overwrites with the same facts. One row, its own lock only.
 */
export async function finishAttempt(database: Database, options: FinishAttemptOptions): Promise<void> {
  const { jobId, stageIndex, slotIndex, attempt } = options;
  assertCount('attempt', attempt, 1);
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
  };
  await database.db
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
      }),
    )
    .execute();
}
