import { asyncScheduler, catchError, defer, from, map, mergeMap, Observable, of, shareReplay, throwError, timer, toArray, type SchedulerLike } from 'rxjs';
import { PipelineError, type ErrorClass } from '../domain/error-class.js';
import type { BatchGenerator, BatchRequest, BatchResponse, BatchStatus, GeneratedImage, GenerationRequest, ImageGenerator } from '../domain/ports.js';
import { OFFLINE_MODEL } from '../domain/price-table.js';
import { loadSharp } from './image-codec.js';
import { dimensionsForAspectRatio } from './image-dimensions.js';

/** Configuration of an {@link OfflineImageGenerator}. Every field is optional. */
export interface OfflineImageGeneratorConfig {
  /** Simulated call latency, ms. Default 0 (still asynchronous). */
  readonly latencyMs?: number;
  /** Extra latency drawn (deterministically) from 0..jitterMs. Default 0. */
  readonly jitterMs?: number;
  /** Fraction of attempts that fail, 0..1. Default 0. */
  readonly failureRate?: number;
  /** Classes injected failures are drawn from. Default {@link DEFAULT_OFFLINE_FAILURE_CLASSES}. */
  readonly failureClasses?: readonly ErrorClass[];
  /** Seed of latency jitter, failures and image variation. Default 0. */
  readonly seed?: number;
  /** Scheduler of the latency timer (a `TestScheduler` in marble tests). Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
  /** Long side of generated images, px. Default 384. */
  readonly size?: number;
  /** `retryAfterMs` carried by injected `rate_limited` failures. Default 1000. */
  readonly rateLimitRetryAfterMs?: number;
}

/** Transient classes the offline generator injects by default. */
export const DEFAULT_OFFLINE_FAILURE_CLASSES: readonly ErrorClass[] = Object.freeze([
  'rate_limited',
  'overloaded',
  'timeout',
  'network',
  'no_image',
] as ErrorClass[]);

/**
 * An {@link ImageGenerator} with no key and no network: it derives a real PNG from the
 * stage's input image and the prompt with sharp.
 *
 * - The image is the input (or, without one, a prompt-coloured gradient) cropped to
 *   the requested aspect ratio (`size` px on the long side), tinted by a prompt-seeded
 *   colour, with a block whose colour and position depend on (job, stage, slot,
 *   attempt): every attempt yields a different image, the same attempt the same bytes.
 * - Latency (`latencyMs` + seeded jitter) is an RxJS `timer` on the injected scheduler.
 * - Fault injection: an attempt fails when `hash(seed, job, stage, slot, attempt)`
 *   falls under `failureRate`, with a class drawn from `failureClasses` by another
 *   hash; so a run is reproducible and a retry (next attempt number) may succeed.
 * - An input image that does not decode fails with `invalid_request` (not retryable:
 *   every attempt would fail the same way).
 * - Cold; unsubscribing before the timer fires does nothing else.
 *
 * @example
 * const offline = new OfflineImageGenerator({ latencyMs: 200, jitterMs: 100, failureRate: 0.1, seed: 42 });
 */
export class OfflineImageGenerator implements ImageGenerator {
  /** The effective configuration, frozen. */
  readonly config: Readonly<Required<OfflineImageGeneratorConfig>>;
  /** Priced as `offline`: free (`DEFAULT_PRICES`). */
  readonly model = OFFLINE_MODEL;

  constructor(config: OfflineImageGeneratorConfig = {}) {
    const failureRate = config.failureRate ?? 0;
    if (!(failureRate >= 0 && failureRate <= 1)) throw new RangeError(`failureRate must be in 0..1, got ${failureRate}`);
    const failureClasses = config.failureClasses ?? DEFAULT_OFFLINE_FAILURE_CLASSES;
    if (failureRate > 0 && failureClasses.length === 0) throw new RangeError('failureClasses must not be empty when failureRate > 0');
    this.config = Object.freeze({
      latencyMs: config.latencyMs ?? 0,
      jitterMs: config.jitterMs ?? 0,
      failureRate,
      failureClasses: Object.freeze([...failureClasses]),
      seed: config.seed ?? 0,
      scheduler: config.scheduler ?? asyncScheduler,
      size: config.size ?? 384,
      rateLimitRetryAfterMs: config.rateLimitRetryAfterMs ?? 1000,
    });
  }

  /** The failure class this attempt is destined to get, or `null` if it succeeds. Deterministic. */
  plannedFailure(request: Pick<GenerationRequest, 'jobId' | 'stageIndex' | 'slotIndex' | 'attempt'>): ErrorClass | null {
    const key = attemptKey(request);
    if (unit(this.config.seed, key, 'fail') >= this.config.failureRate) return null;
    const classes = this.config.failureClasses;
    return classes[Math.min(classes.length - 1, Math.floor(unit(this.config.seed, key, 'class') * classes.length))] ?? null;
  }

  /** Latency of this attempt, ms (latencyMs + seeded jitter). Deterministic. */
  plannedLatencyMs(request: Pick<GenerationRequest, 'jobId' | 'stageIndex' | 'slotIndex' | 'attempt'>): number {
    return this.config.latencyMs + Math.floor(unit(this.config.seed, attemptKey(request), 'jitter') * this.config.jitterMs);
  }

  generate(request: GenerationRequest): Observable<GeneratedImage> {
    return timer(this.plannedLatencyMs(request), this.config.scheduler).pipe(mergeMap(() => this.answer(request)));
  }

  /**
   * The attempt's outcome without the latency: the planned failure, or the rendered image.
   * What `generate` emits after its timer, and what an {@link OfflineBatchGenerator} answers
   * per request of a batch (a batch's wait is the batch's, not each request's).
   */
  answer(request: GenerationRequest): Observable<GeneratedImage> {
    const failure = this.plannedFailure(request);
    if (failure !== null) {
      return throwError(
        () =>
          new PipelineError(failure, `offline generator: injected ${failure} (job ${request.jobId}, stage ${request.stageIndex}, slot ${request.slotIndex}, attempt ${request.attempt})`, {
            retryAfterMs: failure === 'rate_limited' ? this.config.rateLimitRetryAfterMs : undefined,
          }),
      );
    }
    return defer(() => from(this.render(request)));
  }

  private async render(request: GenerationRequest): Promise<GeneratedImage> {
    const { width, height } = dimensionsForAspectRatio(request.aspectRatio, this.config.size);
    const promptHash = hashString(`${this.config.seed}|${request.prompt}`);
    const tint = colour(promptHash);
    let base: Buffer;
    if (request.input !== null) {
      try {
        base = await (await loadSharp())(request.input.bytes, { failOn: 'error' })
          .rotate()
          .resize(width, height, { fit: 'cover' })
          .removeAlpha()
          .raw()
          .toBuffer();
      } catch (error) {
        throw new PipelineError('invalid_request', `offline generator: the input image does not decode (${request.input.bytes.byteLength} bytes)`, {
          cause: error,
        });
      }
    } else {
      base = gradient(width, height, tint, colour(promptHash ^ 0x5bd1e995));
    }
    const key = attemptKey(request);
    const blockW = Math.max(1, Math.floor(width / 4));
    const blockH = Math.max(1, Math.floor(height / 4));
    const blockColour = colour(hashString(`${this.config.seed}|${key}|block`));
    const block = Buffer.alloc(blockW * blockH * 3);
    for (let i = 0; i < blockW * blockH; i++) block.set(blockColour, i * 3);
    const png = await (await loadSharp())(base, { raw: { width, height, channels: 3 } })
      .tint({ r: tint[0], g: tint[1], b: tint[2] })
      .composite([
        {
          input: block,
          raw: { width: blockW, height: blockH, channels: 3 },
          left: Math.floor(unit(this.config.seed, key, 'x') * (width - blockW + 1)),
          top: Math.floor(unit(this.config.seed, key, 'y') * (height - blockH + 1)),
        },
      ])
      .png()
      .toBuffer();
    return { bytes: new Uint8Array(png.buffer, png.byteOffset, png.byteLength), mimeType: 'image/png' };
  }
}

/** Configuration of an {@link OfflineBatchGenerator}. Every field is optional. */
export interface OfflineBatchGeneratorConfig {
  /** How long a batch runs before it succeeds, ms (from its creation, on the scheduler's clock). Default 1000. */
  readonly completeAfterMs?: number;
  /** The clock (`now()`). Default: the generator's scheduler. */
  readonly scheduler?: SchedulerLike;
  /** Requests rendered at once when a batch's responses are first read. Default 4 (sharp works off the event loop; this bounds memory). */
  readonly renderConcurrency?: number;
}

interface OfflineBatch {
  readonly name: string;
  readonly displayName: string;
  readonly requests: readonly BatchRequest[];
  readonly createdAt: number;
  cancelled: boolean;
  /** The responses, rendered once at the first read after the batch completed, then replayed. */
  responses$: Observable<BatchResponse[]> | undefined;
}

/**
 * A {@link BatchGenerator} for the offline provider, so offline runs (`npm run demo`) can use
 * batch mode: batches live in memory (this process only), run for `completeAfterMs` on the
 * scheduler's clock, then succeed with one response per request: the
 * {@link OfflineImageGenerator}'s answer for that attempt (its seeded failure injection
 * applies per request: an injected failure is that request's classified error). Results
 * depend only on the seed and the attempts, so a run is reproducible.
 *
 * - `getBatch` says `running` until the delay has passed, then `succeeded` (or `cancelled`
 *   after `cancelBatch`); an unknown name (a batch of an earlier process) is `failed` as a
 *   whole, so a resumed run sends its slots again in the next round.
 * - No whole-batch faults: a batch never fails or expires here (the fake Gemini server
 *   covers those).
 *
 * @example
 * const batches = new OfflineBatchGenerator(new OfflineImageGenerator({ seed: 7, failureRate: 0.1 }), { completeAfterMs: 2000 });
 */
export class OfflineBatchGenerator implements BatchGenerator {
  /** The effective configuration, frozen. */
  readonly config: Readonly<Required<OfflineBatchGeneratorConfig>>;
  readonly model = OFFLINE_MODEL;
  readonly #generator: OfflineImageGenerator;
  readonly #batches: OfflineBatch[] = [];

  constructor(generator: OfflineImageGenerator, config: OfflineBatchGeneratorConfig = {}) {
    this.#generator = generator;
    this.config = Object.freeze({
      completeAfterMs: config.completeAfterMs ?? 1000,
      scheduler: config.scheduler ?? generator.config.scheduler,
      renderConcurrency: config.renderConcurrency ?? 4,
    });
  }

  createBatch(displayName: string, requests: readonly BatchRequest[]): Observable<string> {
    return defer(() => {
      if (requests.length === 0) return throwError(() => new PipelineError('invalid_request', 'a batch needs at least one request'));
      const name = `batches/offline-${this.#batches.length + 1}`;
      this.#batches.push({ name, displayName, requests: [...requests], createdAt: this.config.scheduler.now(), cancelled: false, responses$: undefined });
      return of(name);
    });
  }

  findBatch(displayName: string): Observable<string | null> {
    return defer(() => of([...this.#batches].reverse().find((b) => b.displayName === displayName)?.name ?? null));
  }

  getBatch(name: string): Observable<BatchStatus> {
    return defer(() => {
      const batch = this.#batches.find((b) => b.name === name);
      // Offline batches live in the process that made them: one an earlier run sent is gone
      // with it. Failed as a whole (retryable), its slots go to the next round.
      if (batch === undefined) return of<BatchStatus>({ name, state: 'failed', error: 'offline batches end with the process that made them; this one was lost with an earlier run' });
      if (batch.cancelled) return of<BatchStatus>({ name, state: 'cancelled', error: 'the batch was cancelled' });
      if (this.config.scheduler.now() - batch.createdAt < this.config.completeAfterMs) return of<BatchStatus>({ name, state: 'running' });
      batch.responses$ ??= this.responses(batch.requests).pipe(shareReplay(1));
      return batch.responses$.pipe(map((responses): BatchStatus => ({ name, state: 'succeeded', responses })));
    });
  }

  cancelBatch(name: string): Observable<void> {
    return defer(() => {
      const batch = this.#batches.find((b) => b.name === name);
      if (batch === undefined) return throwError(() => new PipelineError('invalid_request', `offline batch ${name} not found`));
      // A batch that has ended is left as it is.
      if (this.config.scheduler.now() - batch.createdAt < this.config.completeAfterMs) batch.cancelled = true;
      return of(undefined);
    });
  }

  /** Every request's answer, in request order; a failed one is its classified error. */
  private responses(requests: readonly BatchRequest[]): Observable<BatchResponse[]> {
    return from(requests.map((r, index) => ({ r, index }))).pipe(
      mergeMap(
        ({ r, index }) =>
          this.#generator.answer(r.request).pipe(
            map((image): BatchResponse => ({ key: r.key, image })),
            catchError((error: unknown) => (error instanceof PipelineError ? of<BatchResponse>({ key: r.key, error }) : throwError(() => error))),
            map((response) => ({ response, index })),
          ),
        this.config.renderConcurrency,
      ),
      toArray(),
      map((answered) => answered.sort((a, b) => a.index - b.index).map((a) => a.response)),
    );
  }
}

function attemptKey(r: Pick<GenerationRequest, 'jobId' | 'stageIndex' | 'slotIndex' | 'attempt'>): string {
  return `${r.jobId}|${r.stageIndex}|${r.slotIndex}|${r.attempt}`;
}

/** FNV-1a with a final avalanche: stable across runs and platforms. */
function hashString(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A deterministic number in [0, 1) for (seed, attempt key, purpose). */
function unit(seed: number, key: string, purpose: string): number {
  return hashString(`${seed}|${key}|${purpose}`) / 2 ** 32;
}

function colour(h: number): [number, number, number] {
  return [h & 0xff, (h >>> 8) & 0xff, (h >>> 16) & 0xff];
}

function gradient(width: number, height: number, from: readonly number[], to: readonly number[]): Buffer {
  const raw = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const t = (x + y) / Math.max(1, width + height - 2);
      const i = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) raw[i + c] = Math.round((from[c] ?? 0) * (1 - t) + (to[c] ?? 0) * t);
    }
  }
  return raw;
}
