// The events a stage emits, each built in exactly one place, so that every path that
// reports the same fact (an attempt failed at the provider, in its delivery, or was
// aborted by a cancel) reports it with the same fields. `at` is the engine scheduler's clock.
import type { PipelineError } from '../domain/error-class.js';
import type {
  AttemptCost,
  AttemptFailedEvent,
  AttemptStartedEvent,
  Progress,
  SlotDeliveredEvent,
  StageCompletedEvent,
  StageShortEvent,
} from '../domain/events.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { AttemptRequest, TokenUsage } from '../domain/ports.js';
import type { StageResult } from '../domain/result.js';

/** The request of one attempt at `slot` of `stage` (what `fillSlots` and `fillBatchRounds` send). */
export function attemptRequestOf(jobId: string, stage: StageSpec, slot: number, attempt: number): AttemptRequest {
  return {
    jobId,
    stageIndex: stage.index,
    slotIndex: slot,
    attempt,
    prompt: stage.prompt,
    aspectRatio: stage.aspectRatio,
    ...(stage.imageSize !== undefined ? { imageSize: stage.imageSize } : {}),
    inputAttachId: stage.inputAttachId,
  };
}

/** An attempt got its permits and was sent. */
export function attemptStarted(request: AttemptRequest, at: number): AttemptStartedEvent {
  return { type: 'attempt:started', jobId: request.jobId, at, stage: request.stageIndex, slot: request.slotIndex, attempt: request.attempt };
}

/** What follows a failed attempt: its replacement's backoff, or null when there is none. */
export interface FailedAttempt {
  readonly error: Pick<PipelineError, 'errorClass' | 'message' | 'httpStatus'>;
  readonly latencyMs: number;
  /** Start to the end of the provider call; null: aborted by a cancel or shutdown. */
  readonly providerLatencyMs: number | null;
  /** Backoff before the slot's replacement; null: no replacement (`willRetry: false`, `delayMs: 0`). */
  readonly retryInMs: number | null;
  /** The failed answer's usage, when the provider answered. */
  readonly usage?: TokenUsage | null | undefined;
  /** What the attempt cost (only when the engine has prices). */
  readonly cost?: AttemptCost | undefined;
}

/** An attempt failed (at the provider, in its delivery, or aborted by a cancel). */
export function attemptFailed(request: AttemptRequest, at: number, failed: FailedAttempt): AttemptFailedEvent {
  return {
    type: 'attempt:failed',
    jobId: request.jobId,
    at,
    stage: request.stageIndex,
    slot: request.slotIndex,
    attempt: request.attempt,
    errorClass: failed.error.errorClass,
    message: failed.error.message,
    httpStatus: failed.error.httpStatus ?? null,
    latencyMs: failed.latencyMs,
    providerLatencyMs: failed.providerLatencyMs,
    willRetry: failed.retryInMs !== null,
    delayMs: failed.retryInMs ?? 0,
    // Only when known, so an engine without prices emits the events it always did.
    ...(failed.usage != null ? { usage: failed.usage } : {}),
    ...(failed.cost !== undefined ? { cost: failed.cost } : {}),
  };
}

/** What a delivery filled, and the progress after it. */
export interface DeliveredSlot {
  readonly attachId: string;
  readonly latencyMs: number;
  /** Start to the provider's image. */
  readonly providerLatencyMs: number;
  readonly usage: TokenUsage | null;
  /** What the attempt cost (only when the engine has prices). */
  readonly cost?: AttemptCost | undefined;
  readonly stageProgress: Progress;
  readonly progress: Progress;
}

/** A slot was filled (stored, recorded, charged). */
export function slotDelivered(request: AttemptRequest, at: number, delivered: DeliveredSlot): SlotDeliveredEvent {
  return {
    type: 'slot:delivered',
    jobId: request.jobId,
    at,
    stage: request.stageIndex,
    slot: request.slotIndex,
    attempt: request.attempt,
    attachId: delivered.attachId,
    latencyMs: delivered.latencyMs,
    providerLatencyMs: delivered.providerLatencyMs,
    usage: delivered.usage,
    ...(delivered.cost !== undefined ? { cost: delivered.cost } : {}),
    stageProgress: delivered.stageProgress,
    progress: delivered.progress,
  };
}

/** The stage's last event: `stage:completed` when it holds its quantity, else `stage:short` with the reason. */
export function stageEnded(jobId: string, at: number, result: StageResult): StageCompletedEvent | StageShortEvent {
  const { index: stage, quantity, delivered, shortfall } = result;
  if (shortfall === null) return { type: 'stage:completed', jobId, at, stage, quantity, delivered };
  return { type: 'stage:short', jobId, at, stage, quantity, delivered, missing: shortfall.count, reason: shortfall.reason, errorClass: shortfall.errorClass };
}
