import type { Observable } from 'rxjs';
import type { PipelineError } from './error-class.js';
import type { AspectRatio } from './aspect-ratio.js';
import type { ImageSize } from './models.js';

/** One image a stage owes. */
export interface SlotRef {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly slotIndex: number;
}

/** One try to fill one slot. `attempt` is 1-based and keeps counting across restarts. */
export interface AttemptRequest extends SlotRef {
  readonly attempt: number;
  readonly prompt: string;
  readonly aspectRatio: AspectRatio;
  /** The stage's `imageSize`, when it set one (models that take it: `src/domain/models.ts`). */
  readonly imageSize?: ImageSize;
  readonly inputAttachId: string | null;
}

/** The stage's input image, loaded once per stage and shared by every attempt. */
export interface InputImage {
  readonly bytes: Uint8Array;
  readonly mimeType: string;
}

/** What an {@link ImageGenerator} is asked for: an attempt plus the loaded input image. */
export interface GenerationRequest extends AttemptRequest {
  readonly input: InputImage | null;
}

/** Provider token accounting for one call, when the provider reports it. */
export interface TokenUsage {
  readonly promptTokens?: number | undefined;
  readonly outputTokens?: number | undefined;
  readonly totalTokens?: number | undefined;
  /** Thinking tokens (`thoughtsTokenCount`): billed as output, not part of `outputTokens`. */
  readonly thoughtsTokens?: number | undefined;
  /** Images the answer held (the non-thought image parts); 0 for a blocked or text-only answer. */
  readonly imageCount?: number | undefined;
}

/** Raw bytes a generator produced, not yet validated or converted. */
export interface GeneratedImage {
  readonly bytes: Uint8Array;
  readonly mimeType: string;
  readonly usage?: TokenUsage | undefined;
}

/**
 * The generator port. The returned Observable is cold: nothing happens until it is
 * subscribed; unsubscribing aborts the call. It emits one image then completes, or
 * errors with a {@link PipelineError} that classifies the failure.
 */
export interface ImageGenerator {
  generate(request: GenerationRequest): Observable<GeneratedImage>;
  /** The model its answers are priced as (`src/domain/price-table.ts`); absent: not priced. */
  readonly model?: string;
}

/** A slot filled. `duplicate` means the slot was already filled (nothing new was written). */
export interface Delivery {
  readonly attachId: string;
  readonly duplicate: boolean;
}

/**
 * The two ports the engine drives. Both are cold Observables, errors are
 * {@link PipelineError}s, and `deliver` is idempotent per slot: delivering a slot
 * that is already filled returns the existing attach id with `duplicate: true`
 * and moves no money.
 */
export interface EnginePorts {
  generate(request: AttemptRequest): Observable<GeneratedImage>;
  deliver(request: AttemptRequest, image: GeneratedImage): Observable<Delivery>;
  /** The batch API's ports, for stages of `mode: "batch"` (absent: such a stage cannot run). */
  readonly batch?: BatchStagePorts | undefined;
}

/**
 * Batch mode (issue 17): the provider runs many requests asynchronously, at a lower price.
 * One request of a batch is one attempt, keyed `jobId/stage/slot/attempt` ({@link batchRequestKey}).
 */
export interface BatchRequest {
  readonly key: string;
  readonly request: GenerationRequest;
}

/** Where a batch stands at the provider. `succeeded`: its responses can be read. */
export type BatchState = 'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'expired';

/** One request's outcome in a batch that succeeded: an image, or the failure, classified. */
export type BatchResponse =
  | { readonly key: string; readonly image: GeneratedImage }
  | { readonly key: string; readonly error: PipelineError };

/** A batch as the provider last described it. */
export interface BatchStatus {
  /** The provider's name of the batch (e.g. `batches/123`). */
  readonly name: string;
  readonly state: BatchState;
  /** When `succeeded`: the responses, by key. A request with no response here got none. */
  readonly responses?: readonly BatchResponse[] | undefined;
  /** When `failed` or `expired` (or `cancelled`): the provider's reason, for the record. */
  readonly error?: string | undefined;
}

/**
 * The batch port. Cold Observables, errors are {@link PipelineError}s classified as for
 * interactive calls (a 429 on create is `rate_limited`, and so on).
 */
export interface BatchGenerator {
  /**
   * Submits `requests` as one batch named `displayName` (the caller's own key for it, stored
   * before the call: {@link findBatch} finds the batch again when the answer was lost).
   * Emits the provider's batch name. Inline when the requests fit the inline limit, else
   * through an uploaded file.
   */
  createBatch(displayName: string, requests: readonly BatchRequest[]): Observable<string>;
  /** The batch created under `displayName`, or null when there is none. */
  findBatch(displayName: string): Observable<string | null>;
  /** The batch's state; with its responses once it succeeded. */
  getBatch(name: string): Observable<BatchStatus>;
  /** Asks the provider to cancel the batch (a batch that has ended is left as it is). */
  cancelBatch(name: string): Observable<void>;
  /** The model its answers are priced as (at batch prices). */
  readonly model?: string;
}

/** The key of one attempt in a batch: `jobId/stage/slot/attempt`. */
export function batchRequestKey(request: AttemptRequest): string {
  return `${request.jobId}/${request.stageIndex}/${request.slotIndex}/${request.attempt}`;
}

/** One round of a batch stage: the slots still owed, each with its next attempt, sent as one batch. */
export interface BatchRound {
  readonly stageIndex: number;
  /** 1-based: round 2 carries the replacements of round 1's failures. */
  readonly round: number;
  readonly requests: readonly AttemptRequest[];
  /**
   * An earlier run recorded this round (resume): its create may have reached the provider
   * though the answer was lost, so `submit` looks the batch up by its key before creating.
   */
  readonly resumed?: boolean;
}

/**
 * What a batch stage drives. Cold Observables; `submit` records the round (its attempts as
 * started, the batch under its own key) before and after the provider's create, so a
 * worker that takes the job over polls the same batch instead of sending a second one.
 */
export interface BatchStagePorts {
  /** Sends the round as one batch; emits the provider's batch name. */
  submit(round: BatchRound): Observable<string>;
  /** The batch's state (with its responses once it succeeded); `round` says which round it runs (for the record). */
  poll(name: string, round: BatchRound): Observable<BatchStatus>;
  /**
   * Asks the provider to cancel the round's batch. `name` null: the create has not answered
   * (or its answer was lost), so the batch, if the provider made it, is found by its key.
   */
  cancel(name: string | null, round: BatchRound): Observable<void>;
  /** The same delivery transaction as an interactive attempt's (exactly once per slot). */
  deliver(request: AttemptRequest, image: GeneratedImage): Observable<Delivery>;
}
