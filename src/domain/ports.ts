import type { Observable } from 'rxjs';
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
}
