import type { ErrorClass } from './error-class.js';
import type { JobResult, JobStatus, ShortfallReason } from './result.js';
import type { TokenUsage } from './ports.js';

/** Fields every event carries. `at` is the engine scheduler's clock, in ms. */
interface EventBase {
  readonly jobId: string;
  readonly at: number;
}

export interface Progress {
  readonly delivered: number;
  readonly total: number;
}

export interface JobStartedEvent extends EventBase {
  readonly type: 'job:started';
  readonly totalImages: number;
  /** Already delivered before this run (non-zero on resume). */
  readonly deliveredImages: number;
  readonly stages: readonly { readonly index: number; readonly quantity: number; readonly delivered: number }[];
}

export interface AttemptStartedEvent extends EventBase {
  readonly type: 'attempt:started';
  readonly stage: number;
  readonly slot: number;
  readonly attempt: number;
}

/**
 * What an attempt cost, estimated from the price table (`src/domain/price-table.ts`); on
 * the attempt's end event only when the engine was given prices.
 */
export interface AttemptCost {
  /** The model the attempt was priced as. */
  readonly model: string;
  /** The answer's cost (usage x prices), USD; null: no answer arrived, or the model has no price. */
  readonly usd: number | null;
  /** A timed-out call the provider may still bill: its per-image price, USD (else 0). */
  readonly possiblyBilledUsd: number;
}

export interface AttemptFailedEvent extends EventBase {
  readonly type: 'attempt:failed';
  readonly stage: number;
  readonly slot: number;
  readonly attempt: number;
  readonly errorClass: ErrorClass;
  readonly message: string;
  readonly httpStatus: number | null;
  /** From the attempt's start (both permits held) to this failure. */
  readonly latencyMs: number;
  /**
   * From the attempt's start to the end of its provider call: the provider's answer (an
   * image, then a failed delivery; or an error), or the attempt timeout. `null` when the
   * attempt was aborted by a cancel or shutdown (its call, if still open, never answered).
   */
  readonly providerLatencyMs: number | null;
  /** Whether a replacement attempt for this slot is scheduled. */
  readonly willRetry: boolean;
  /** Backoff before the replacement (0 when `willRetry` is false). */
  readonly delayMs: number;
  /** The usage of the answer that failed (a safety block, no image, a failed delivery), when there was one. */
  readonly usage?: TokenUsage | null;
  /** What the attempt cost; present when the engine has prices. */
  readonly cost?: AttemptCost;
}

export interface SlotDeliveredEvent extends EventBase {
  readonly type: 'slot:delivered';
  readonly stage: number;
  readonly slot: number;
  readonly attempt: number;
  readonly attachId: string;
  /** From the attempt's start (both permits held) to the committed delivery. */
  readonly latencyMs: number;
  /**
   * From the attempt's start to the provider's image; `latencyMs - providerLatencyMs` is
   * the delivery (WebP conversion, upload, the delivery transaction).
   */
  readonly providerLatencyMs: number;
  readonly usage: TokenUsage | null;
  /** What the attempt cost; present when the engine has prices. */
  readonly cost?: AttemptCost;
  /** Stage progress and job progress after this delivery. Monotone. */
  readonly stageProgress: Progress;
  readonly progress: Progress;
}

export interface StageCompletedEvent extends EventBase {
  readonly type: 'stage:completed';
  readonly stage: number;
  readonly quantity: number;
  readonly delivered: number;
}

export interface StageShortEvent extends EventBase {
  readonly type: 'stage:short';
  readonly stage: number;
  readonly quantity: number;
  readonly delivered: number;
  readonly missing: number;
  readonly reason: ShortfallReason;
  readonly errorClass: ErrorClass | null;
}

export interface JobFinishedEvent extends EventBase {
  readonly type: 'job:finished';
  readonly status: JobStatus;
  /** Stage order, then slot order. */
  readonly attachIds: readonly string[];
  readonly result: JobResult;
}

/** Every event the engine emits, discriminated by `type`. */
export type PipelineEvent =
  | JobStartedEvent
  | AttemptStartedEvent
  | AttemptFailedEvent
  | SlotDeliveredEvent
  | StageCompletedEvent
  | StageShortEvent
  | JobFinishedEvent;

export type PipelineEventType = PipelineEvent['type'];
