import { Observable, catchError, concat, defer, map, mergeMap, of, race, take, throwError, throwIfEmpty, timeout, type SchedulerLike } from 'rxjs';
import { PipelineError, toPipelineError } from '../domain/error-class.js';
import type { AttemptRequest, Delivery, EnginePorts, GeneratedImage } from '../domain/ports.js';
import type { ConcurrencyLimiter, Permit } from '../engine/concurrency-limiter.js';
import type { Share } from '../engine/fair-queue.js';
import type { ProviderLimiter } from '../engine/provider-limiter.js';

/** An attempt that got both permits and was sent: what its outcome needs to know about its start. */
export interface SentAttempt {
  readonly request: AttemptRequest;
  /** The global permit it ran under (a 429 cuts the limit once per permit epoch). */
  readonly permit: Permit;
  readonly startedAt: number;
}

/**
 * What one request becomes: `started`, then exactly one outcome; or only `dropped` (never sent).
 * `answeredAt` (scheduler time) is when the provider call ended: its image (then the
 * delivery follows), its error, or the attempt timeout.
 */
export type AttemptItem =
  | { readonly kind: 'started'; readonly sent: SentAttempt }
  | { readonly kind: 'delivered'; readonly sent: SentAttempt; readonly answeredAt: number; readonly image: GeneratedImage; readonly delivery: Delivery }
  | {
      readonly kind: 'failed';
      readonly sent: SentAttempt;
      readonly answeredAt: number;
      readonly error: PipelineError;
      /** The provider's image, when the failure came after it (the delivery failed): that answer was billed. */
      readonly image?: GeneratedImage | undefined;
    }
  | {
      readonly kind: 'dropped';
      /** Dropped because `admit` refused it (the job's spend cap), not because the stage had stopped. */
      readonly refused?: true;
    };

export interface AttemptConfig {
  readonly ports: EnginePorts;
  /** A hung `generate` call becomes a `timeout` failure after this many ms. */
  readonly attemptTimeoutMs: number;
  /** The stage's own limit: held for the whole attempt. */
  readonly stageLimiter: ConcurrencyLimiter;
  /** The provider's limit, shared and adaptive: held for the `generate` call only. */
  readonly globalLimiter: ProviderLimiter;
  /** Whose turn this attempt waits for at the provider's limit (user, job, priority). */
  readonly share: Share;
  readonly scheduler: SchedulerLike;
  /** Emits once the stage stops taking requests (its own stop or the job's halt). */
  readonly halt$: Observable<void>;
  /** Whether the stage has stopped (or is being torn down), asked when the permits are granted. */
  readonly halted: () => boolean;
  /**
   * Asked after `halted`, when the permits are granted: false drops the request unsent
   * (`dropped` with `refused`): the job's spend cap. Default: every request is admitted.
   */
  readonly admit?: ((request: AttemptRequest) => boolean) | undefined;
}

const DROPPED = { kind: 'dropped' } as const;
const REFUSED = { kind: 'dropped', refused: true } as const;

/**
 * One request's attempt: the stage permit for the whole attempt, the global (provider)
 * permit for the `generate` call only, so WebP conversion, upload and the delivery
 * transaction never keep the provider idle. The provider permit is asked for with the
 * job's `share`, so jobs of different users take turns at it. Emits `started` once both
 * permits are held, then exactly one outcome: `delivered`, or `failed` with the
 * classified error (a throw, an error, an empty answer or a hung call; nothing escapes
 * as an error, and images after the first are not waited for). A request the stage
 * stopped before it was sent emits only `dropped`: a halt drops a request still waiting
 * for a permit, never one already sent; so does one `admit` refuses (the spend cap). A
 * request waiting for the provider's permit is dropped when the halt comes; one still
 * waiting for the stage's permit when it is granted (the stage's running attempts end first,
 * then its whole queue is dropped in that turn).
 *
 * ```
 * stage permit   ^----------------------!
 * global permit     ^-----------!                   generate
 * emits          ---s-----------------o|            s=started o=delivered|failed
 * stage permit   ^                                   waiting for the provider's permit:
 * halt$          -h
 * emits          -(d|)                               d=dropped, no call made
 * stage permit   ---^                                waiting for the stage's permit:
 * halt$          -h
 * emits          ---(d|)                             dropped once it is granted
 * ```
 *
 * An outcome is emitted while its permits are still held (the stage's, and the global
 * one for a failed `generate`), so the caller's bookkeeping runs first: a `rate_limited`
 * outcome cuts the global limit before its own permit goes back.
 */
export function runAttempt(request: AttemptRequest, config: AttemptConfig): Observable<AttemptItem> {
  const { ports, scheduler, attemptTimeoutMs } = config;
  // The stage permit is unkeyed (one stage, FIFO); the provider permit waits its share's turn.
  //
  // A request waiting for the stage's permit holds its place in that queue and nothing else:
  // every unfilled slot of a stage waits there from the start (a stage of 1,000 slots, 1,000
  // requests), so the halt is raced only once the permit is granted. Before, each queued
  // request also held its own subscription to the halt (a race, a merge of two subjects, their
  // subscribers: ~12 KB a slot, 67 MiB of heap for a 5,000-image job; BENCHMARKS.md 11C), and
  // the attempt's functions below are made once it holds the permit, not while it waits.
  // A halt still ends the queue at once: the requests that hold the stage's permits (at most
  // the stage's limit) see the halt and end, and each queued request, granted its permit
  // right after, finds the stage halted and is dropped unsent, in the same turn.
  return config.stageLimiter.run(() => {
    // A request that waited for the stage's permit while the stage stopped is dropped unsent.
    if (config.halted()) return of(DROPPED);
    // A failure of the call itself is answered when it arrives; a failed delivery was answered with its image.
    const failed = (sent: SentAttempt, answeredAt?: number, image?: GeneratedImage) => (error: unknown) =>
      of<AttemptItem>({ kind: 'failed', sent, answeredAt: answeredAt ?? scheduler.now(), error: toPipelineError(error), ...(image !== undefined ? { image } : {}) });
    const generate$ = (sent: SentAttempt) =>
      defer(() => ports.generate(request)).pipe(
        timeout({ first: attemptTimeoutMs, scheduler, with: () => throwError(() => new PipelineError('timeout', `no image within ${attemptTimeoutMs} ms`)) }),
        take(1),
        throwIfEmpty(() => new PipelineError('no_image', 'the generator completed without an image')),
        map((image) => ({ kind: 'generated', sent, answeredAt: scheduler.now(), image }) as const),
        catchError(failed(sent)),
      );
    const deliver$ = (sent: SentAttempt, answeredAt: number, image: GeneratedImage) =>
      defer(() => ports.deliver(request, image)).pipe(
        take(1),
        throwIfEmpty(() => new PipelineError('storage', 'the delivery completed without a result')),
        map((delivery): AttemptItem => ({ kind: 'delivered', sent, answeredAt, image, delivery })),
        catchError(failed(sent, answeredAt, image)),
      );
    const sent$ = config.globalLimiter
      .run(
        (permit) =>
          defer(() => {
            // A request that waited for the provider's permit while the stage stopped is dropped unsent.
            if (config.halted()) return of(DROPPED);
            // The cap's check is made here, as late as possible: the estimate in flight is what is really sent.
            if (config.admit !== undefined && !config.admit(request)) return of(REFUSED);
            const sent: SentAttempt = { request, permit, startedAt: scheduler.now() };
            return concat(of<AttemptItem>({ kind: 'started', sent }), generate$(sent));
          }),
        config.share,
      )
      .pipe(mergeMap((item) => (item.kind === 'generated' ? deliver$(item.sent, item.answeredAt, item.image) : of(item))));
    // Whichever emits first wins: the halt (still waiting for the provider's permit) or the attempt (`started`).
    return race(config.halt$.pipe(take(1), map(() => DROPPED)), sent$);
  });
}
