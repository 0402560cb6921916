import {
  EMPTY,
  Observable,
  ReplaySubject,
  merge,
  catchError,
  concat,
  defer,
  expand,
  filter,
  from,
  map,
  mergeMap,
  of,
  take,
  takeUntil,
  throwError,
  timeout,
  timer,
  type SchedulerLike,
} from 'rxjs';
import { PipelineError, toPipelineError, type ErrorClass } from '../domain/error-class.js';
import type {
  AttemptFailedEvent,
  AttemptStartedEvent,
  PipelineEvent,
  SlotDeliveredEvent,
  StageCompletedEvent,
  StageShortEvent,
} from '../domain/events.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { AttemptRequest, Delivery, EnginePorts, GeneratedImage } from '../domain/ports.js';
import type { RandomSource } from '../domain/random.js';
import type { StageState } from '../domain/resume-state.js';
import type { Shortfall, StageResult } from '../domain/result.js';
import type { AdaptiveConcurrencyLimiter } from '../engine/adaptive-concurrency-limiter.js';
import type { ConcurrencyLimiter, Permit } from '../engine/concurrency-limiter.js';
import { capRetryAfter } from '../engine/cap-retry-after.js';
import { DEFAULT_MAX_RETRY_AFTER_MS, fullJitterBackoff, type BackoffConfig } from '../engine/full-jitter-backoff.js';

/** How much a stage may spend on failures. */
export interface RetryBudget {
  /** Attempts one slot may use in all, the first included. */
  readonly maxAttemptsPerSlot: number;
  /** Replacement attempts (attempt > 1) the whole stage may use. */
  readonly maxReplacementsPerStage: number;
}

/**
 * What the stages of one job share: the job-wide halt (an `auth` or `quota_exhausted`
 * failure stops every stage), the cancel signal, and the job's progress counter.
 */
export class JobControl {
  /** Emits (and replays to late subscribers) once the job must stop taking new slots. */
  readonly halted$ = new ReplaySubject<void>(1);
  #haltedBy: ErrorClass | null = null;
  #cancelled = false;
  delivered: number;

  constructor(
    readonly jobId: string,
    readonly total: number,
    alreadyDelivered: number,
  ) {
    this.delivered = alreadyDelivered;
  }

  get haltedBy(): ErrorClass | null {
    return this.#haltedBy;
  }

  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** Stops every stage from starting new attempts; in-flight attempts finish. */
  halt(errorClass: ErrorClass): void {
    if (this.#haltedBy !== null) return;
    this.#haltedBy = errorClass;
    this.halted$.next();
  }

  /** Marks the job cancelled and stops new attempts in every stage. */
  cancel(): void {
    this.#cancelled = true;
    this.halt('cancelled');
  }
}

export interface FillSlotsConfig {
  readonly stage: StageSpec;
  /** Per-slot state loaded from the database; fresh stages have no fills and no attempts. */
  readonly state: StageState;
  readonly ports: EnginePorts;
  readonly budget: RetryBudget;
  readonly backoff: BackoffConfig;
  /** A hung `generate` call becomes a `timeout` failure after this many ms. */
  readonly attemptTimeoutMs: number;
  /** This stage's own limit. */
  readonly stageLimiter: ConcurrencyLimiter;
  /** The limit shared by every stage (and every job of a worker). */
  readonly globalLimiter: AdaptiveConcurrencyLimiter;
  readonly job: JobControl;
  /** Cancellation: in-flight attempts are aborted, the stage ends short with `cancelled`. */
  readonly cancel$: Observable<unknown>;
  readonly scheduler: SchedulerLike;
  readonly random: RandomSource;
}

/** What a stage stream emits: events while it runs, then its result once. */
export type StageItem = { readonly kind: 'event'; readonly event: PipelineEvent } | { readonly kind: 'result'; readonly result: StageResult };

type Step =
  | { readonly kind: 'request'; readonly request: AttemptRequest }
  | { readonly kind: 'event'; readonly event: PipelineEvent }
  | { readonly kind: 'replace'; readonly request: AttemptRequest; readonly delayMs: number };

type Outcome =
  | { readonly ok: true; readonly delivery: Delivery; readonly image: GeneratedImage }
  | { readonly ok: false; readonly error: PipelineError };

/**
 * Fills one stage's slots: the heart of the engine.
 *
 * Requests exactly the unfilled slots (on resume, attempt numbers continue from the
 * recorded counts, and only charged attempts count against the budget: an attempt
 * abandoned by a dead process is not a provider failure). Each request runs `generate -> deliver` under the stage limit
 * and the global limit. A retryable failure becomes a replacement request for the
 * **same slot** after `fullJitterBackoff` (the shortfall loop is an `expand`), while
 * the budget lasts; there is no barrier: other slots and stages never wait for it.
 * A non-retryable failure stops this stage's new requests (in-flight ones finish);
 * `auth` and `quota_exhausted` (a server delay above `backoff.maxRetryAfterMs`) halt
 * the whole job. A slot is filled at most once, so never more than
 * `quantity` deliveries.
 *
 * Errors never end the stream: every failure is caught inside the projection and
 * becomes an `attempt:failed` event. The stream completes after the stage's
 * `stage:completed` or `stage:short` event and its {@link StageResult}.
 *
 * ```
 * quantity 2, slot 1 fails once (retryable), backoff 3:
 * requests   (01)---1'
 * events     s s-fd--s-d-(cR)     s=attempt:started f=failed d=delivered c=stage:completed R=result
 * ```
 */
export function fillSlots(config: FillSlotsConfig): Observable<StageItem> {
  return defer(() => {
    const { stage, ports, budget, job, scheduler } = config;
    const jobId = job.jobId;
    const quantity = stage.quantity;
    const attachIds: (string | null)[] = config.state.map((s) => s.attachId);
    // Two counts per slot: `attemptsUsed` numbers the next attempt (abandoned ones
    // included, so numbers stay unique); `attemptsCharged` is what the budget sees.
    const attemptsUsed: number[] = config.state.map((s) => s.attemptsUsed);
    const attemptsCharged: number[] = config.state.map((s) => s.attemptsCharged ?? s.attemptsUsed);
    let delivered = attachIds.filter((id) => id !== null).length;
    // A restart does not refund the stage budget: every charged attempt beyond a slot's
    // first was a replacement, filled slot or not (as in an uninterrupted run).
    let replacementsUsed = attemptsCharged.reduce((sum, charged) => sum + Math.max(0, charged - 1), 0);
    let stoppedBy: ErrorClass | null = null;
    let lastErrorClass: ErrorClass | null = null;
    const inFlight = new Map<number, { request: AttemptRequest; startedAt: number }>();
    const stageHalt$ = new ReplaySubject<void>(1);
    const halt$ = merge(stageHalt$, job.halted$);
    // Set first thing on teardown: releasing an aborted attempt's permit must not start
    // a queued request of this same, dying stage.
    let closed = false;
    const halted = () => closed || stoppedBy !== null || job.haltedBy !== null;

    const event = <E extends PipelineEvent>(e: E): Step => ({ kind: 'event', event: e });
    const requestFor = (slot: number, attempt: number): Extract<Step, { kind: 'request' }> => ({
      kind: 'request',
      request: {
        jobId,
        stageIndex: stage.index,
        slotIndex: slot,
        attempt,
        prompt: stage.prompt,
        aspectRatio: stage.aspectRatio,
        inputAttachId: stage.inputAttachId,
      },
    });

    // Whether a slot may have one more attempt, charging the stage budget if it is a replacement.
    const admit = (slot: number): boolean => {
      const next = (attemptsCharged[slot] ?? 0) + 1;
      if (next > budget.maxAttemptsPerSlot) return false;
      if (next > 1) {
        if (replacementsUsed >= budget.maxReplacementsPerStage) return false;
        replacementsUsed++;
      }
      return true;
    };

    const onOutcome = (request: AttemptRequest, permit: Permit, startedAt: number, outcome: Outcome): Observable<Step> => {
      inFlight.delete(request.slotIndex);
      const latencyMs = scheduler.now() - startedAt;
      if (outcome.ok) {
        config.globalLimiter.onSuccess();
        if (attachIds[request.slotIndex] !== null) return EMPTY;
        attachIds[request.slotIndex] = outcome.delivery.attachId;
        delivered++;
        job.delivered++;
        const deliveredEvent: SlotDeliveredEvent = {
          type: 'slot:delivered',
          jobId,
          at: scheduler.now(),
          stage: stage.index,
          slot: request.slotIndex,
          attempt: request.attempt,
          attachId: outcome.delivery.attachId,
          latencyMs,
          usage: outcome.image.usage ?? null,
          stageProgress: { delivered, total: quantity },
          progress: { delivered: job.delivered, total: job.total },
        };
        return of(event(deliveredEvent));
      }

      // A server delay above the cap means its quota is gone: `quota_exhausted`, which halts the job.
      const error = capRetryAfter(outcome.error, config.backoff.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS);
      lastErrorClass = error.errorClass;
      if (error.errorClass === 'rate_limited') config.globalLimiter.onRateLimited(permit);
      if (error.errorClass === 'auth' || error.errorClass === 'quota_exhausted') job.halt(error.errorClass);
      else if (!error.retryable && stoppedBy === null) {
        stoppedBy = error.errorClass;
        stageHalt$.next();
      }
      const willRetry = error.retryable && !halted() && admit(request.slotIndex);
      const delayMs = willRetry ? fullJitterBackoff(request.attempt, error.retryAfterMs, config.random, config.backoff) : 0;
      const failed: AttemptFailedEvent = {
        type: 'attempt:failed',
        jobId,
        at: scheduler.now(),
        stage: stage.index,
        slot: request.slotIndex,
        attempt: request.attempt,
        errorClass: error.errorClass,
        message: error.message,
        httpStatus: error.httpStatus ?? null,
        latencyMs,
        willRetry,
        delayMs,
      };
      if (!willRetry) return of(event(failed));
      const next = requestFor(request.slotIndex, request.attempt + 1);
      return of(event(failed), { kind: 'replace', request: next.request, delayMs } as const);
    };

    // The backoff wait happens outside the permits: a slot waiting to retry holds no
    // concurrency, and only its own slot waits. A halt cancels the wait.
    const afterBackoff = (step: Step): Observable<Step> =>
      step.kind === 'replace'
        ? timer(step.delayMs, scheduler).pipe(
            takeUntil(halt$),
            map((): Step => ({ kind: 'request', request: step.request })),
          )
        : of(step);

    // The global permit (the provider's limit) is held for the provider call only; the
    // delivery (WebP, upload, transaction) runs under the stage permit, so a slow
    // database or store never keeps the provider idle.
    const runAttempt = (request: AttemptRequest): Observable<Step> => {
      let started = false;
      let permit: Permit = { epoch: 0 };
      let startedAt = 0;
      type Generated = { readonly kind: 'started' } | { readonly kind: 'image'; readonly image: GeneratedImage } | { readonly kind: 'failed'; readonly error: PipelineError };
      const generated$ = config.globalLimiter.run((p) =>
        defer(() => {
          // A request that waited for a permit while the stage stopped is dropped unsent.
          if (halted()) return EMPTY;
          started = true;
          permit = p;
          startedAt = scheduler.now();
          attemptsUsed[request.slotIndex] = Math.max(attemptsUsed[request.slotIndex] ?? 0, request.attempt);
          attemptsCharged[request.slotIndex] = (attemptsCharged[request.slotIndex] ?? 0) + 1;
          inFlight.set(request.slotIndex, { request, startedAt });
          const image$ = defer(() => ports.generate(request)).pipe(
            timeout({
              first: config.attemptTimeoutMs,
              scheduler,
              with: () => throwError(() => new PipelineError('timeout', `no image within ${config.attemptTimeoutMs} ms`)),
            }),
            take(1),
            map((image): Generated => ({ kind: 'image', image })),
            failWhenEmpty('no_image', 'the generator completed without an image'),
            catchError((error: unknown) => of<Generated>({ kind: 'failed', error: toPipelineError(error) })),
          );
          return concat(of<Generated>({ kind: 'started' }), image$);
        }),
      );
      const attempt$ = config.stageLimiter.run(() =>
        generated$.pipe(
          mergeMap((item): Observable<Step> => {
            if (item.kind === 'started') {
              const startedEvent: AttemptStartedEvent = { type: 'attempt:started', jobId, at: startedAt, stage: stage.index, slot: request.slotIndex, attempt: request.attempt };
              return of(event(startedEvent));
            }
            if (item.kind === 'failed') return onOutcome(request, permit, startedAt, { ok: false, error: item.error });
            return defer(() => ports.deliver(request, item.image)).pipe(
              take(1),
              map((delivery): Outcome => ({ ok: true, delivery, image: item.image })),
              failWhenEmpty('storage', 'the delivery completed without a result'),
              catchError((error: unknown) => of<Outcome>({ ok: false, error: toPipelineError(error) })),
              mergeMap((outcome) => onOutcome(request, permit, startedAt, outcome)),
            );
          }),
        ),
      );
      // A halt drops requests still queued for a permit, but never one already running.
      return attempt$.pipe(takeUntil(halt$.pipe(filter(() => !started))), mergeMap(afterBackoff));
    };

    const initial: Step[] = [];
    for (let slot = 0; slot < quantity; slot++) {
      if (attachIds[slot] === null && admit(slot)) initial.push(requestFor(slot, (attemptsUsed[slot] ?? 0) + 1));
    }

    const work$ = from(initial).pipe(
      expand((step) => (step.kind === 'request' ? runAttempt(step.request) : EMPTY)),
      filter((step): step is Extract<Step, { kind: 'event' }> => step.kind === 'event'),
      map((step): StageItem => ({ kind: 'event', event: step.event })),
    );

    // Cancellation aborts in-flight attempts; each is reported as a `cancelled` failure
    // before the stage's own work is torn down. Every stage watches cancel$ itself, so
    // each reports its own in-flight attempts.
    const run$ = new Observable<StageItem>((subscriber) => {
      const stopWork$ = new ReplaySubject<void>(1);
      const cancelSubscription = config.cancel$.pipe(take(1)).subscribe({
        next: () => {
          const now = scheduler.now();
          for (const { request, startedAt } of inFlight.values()) {
            subscriber.next({
              kind: 'event',
              event: {
                type: 'attempt:failed',
                jobId,
                at: now,
                stage: stage.index,
                slot: request.slotIndex,
                attempt: request.attempt,
                errorClass: 'cancelled',
                message: 'the job was cancelled',
                httpStatus: null,
                latencyMs: now - startedAt,
                willRetry: false,
                delayMs: 0,
              },
            });
          }
          inFlight.clear();
          job.cancel();
          stopWork$.next();
        },
        error: (e: unknown) => subscriber.error(e),
      });
      const workSubscription = work$.pipe(takeUntil(stopWork$)).subscribe({
        next: (item) => subscriber.next(item),
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      });
      return () => {
        closed = true;
        workSubscription.unsubscribe();
        cancelSubscription.unsubscribe();
      };
    });

    const finish$ = defer(() => {
      const result: StageResult = {
        index: stage.index,
        quantity,
        delivered,
        attachIds: attachIds.filter((id): id is string => id !== null),
        shortfall: delivered === quantity ? null : shortfallOf(quantity - delivered),
      };
      const now = scheduler.now();
      const last: StageCompletedEvent | StageShortEvent = result.shortfall
        ? {
            type: 'stage:short',
            jobId,
            at: now,
            stage: stage.index,
            quantity,
            delivered,
            missing: result.shortfall.count,
            reason: result.shortfall.reason,
            errorClass: result.shortfall.errorClass,
          }
        : { type: 'stage:completed', jobId, at: now, stage: stage.index, quantity, delivered };
      return from<StageItem[]>([{ kind: 'event', event: last }, { kind: 'result', result }]);
    });

    function shortfallOf(count: number): Shortfall {
      if (job.cancelled) return { count, reason: 'cancelled', errorClass: 'cancelled' };
      if (stoppedBy !== null) return { count, reason: 'non_retryable', errorClass: stoppedBy };
      if (job.haltedBy !== null) {
        return lastErrorClass === job.haltedBy
          ? { count, reason: 'non_retryable', errorClass: job.haltedBy }
          : { count, reason: 'job_aborted', errorClass: job.haltedBy };
      }
      return { count, reason: 'budget_exhausted', errorClass: lastErrorClass };
    }

    return concat(run$, finish$);
  });
}

/** An empty answer from a port is a failure, not a silent gap: errors with `errorClass` if the source completes without a value. */
function failWhenEmpty<T>(errorClass: ErrorClass, message: string) {
  return (source: Observable<T>): Observable<T> =>
    new Observable<T>((subscriber) => {
      let seen = false;
      return source.subscribe({
        next: (value) => {
          seen = true;
          subscriber.next(value);
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          if (seen) subscriber.complete();
          else subscriber.error(new PipelineError(errorClass, message));
        },
      });
    });
}
