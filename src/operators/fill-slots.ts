import { EMPTY, Observable, ReplaySubject, concat, defer, expand, filter, from, map, merge, mergeMap, takeUntil, timer, type SchedulerLike } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import type { AttemptCost, PipelineEvent } from '../domain/events.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { AttemptRequest, EnginePorts } from '../domain/ports.js';
import type { RandomSource } from '../domain/random.js';
import type { StageState } from '../domain/resume-state.js';
import type { StageResult } from '../domain/result.js';
import { attemptFailed, attemptRequestOf, attemptStarted, slotDelivered, stageEnded } from '../engine/attempt-events.js';
import { capRetryAfter } from '../engine/cap-retry-after.js';
import { StageCostBook, type AttemptEnding, type StageCost } from '../engine/cost-cap.js';
import type { ConcurrencyLimiter } from '../engine/concurrency-limiter.js';
import type { Share } from '../engine/fair-queue.js';
import { DEFAULT_MAX_RETRY_AFTER_MS, fullJitterBackoff, type BackoffConfig } from '../engine/full-jitter-backoff.js';
import type { JobControl } from '../engine/job-control.js';
import type { ProviderLimiter } from '../engine/provider-limiter.js';
import { runAttempt, type AttemptItem, type SentAttempt } from './run-attempt.js';
import { StageLedger, type RetryBudget, type SlotRequest } from '../engine/stage-ledger.js';
import { untilCancelled } from './until-cancelled.js';

export interface FillSlotsConfig {
  readonly stage: StageSpec;
  /** Per-slot state loaded from the database; fresh stages have no fills and no attempts. */
  readonly state: StageState;
  readonly ports: EnginePorts;
  readonly budget: RetryBudget;
  readonly backoff: BackoffConfig;
  /** A hung `generate` call becomes a `timeout` failure after this many ms. */
  readonly attemptTimeoutMs: number;
  /** This stage's own limit (see "Why the stage limit is a permit" in {@link fillSlots}). */
  readonly stageLimiter: ConcurrencyLimiter;
  /** The limit shared by every stage (and every job of a worker); it adapts (AIMD). */
  readonly globalLimiter: ProviderLimiter;
  /** This job's share of `globalLimiter` (user, job, priority): jobs of different users take turns. */
  readonly share: Share;
  readonly job: JobControl;
  /** Cancellation: in-flight attempts are aborted, the stage ends short with `cancelled`. */
  readonly cancel$: Observable<unknown>;
  readonly scheduler: SchedulerLike;
  readonly random: RandomSource;
  /** Prices (each attempt's end event carries its cost) and the job's spend cap. Absent: nothing priced, no cap. */
  readonly cost?: StageCost | undefined;
}

export type { StageCost } from '../engine/cost-cap.js';

/** What a stage stream emits: events while it runs, then its result once. */
export type StageItem = { readonly kind: 'event'; readonly event: PipelineEvent } | { readonly kind: 'result'; readonly result: StageResult };

/**
 * What flows round the stage's loop (`expand` feeds every step back to itself): a
 * request becomes an attempt; a shortfall (an attempt failed, retryable, in budget)
 * becomes the slot's replacement request after its backoff; an event is the output.
 */
type Step =
  | { readonly kind: 'request'; readonly request: AttemptRequest }
  | { readonly kind: 'shortfall'; readonly replacement: AttemptRequest; readonly delayMs: number }
  | { readonly kind: 'event'; readonly event: PipelineEvent };

const eventStep = (event: PipelineEvent): Step => ({ kind: 'event', event });

const CANCELLED = new PipelineError('cancelled', 'the job was cancelled');

/**
 * Fills one stage's slots: the heart of the engine. A composition of the
 * {@link StageLedger} (the books: admit, charge, fill once, shortfall reason),
 * {@link runAttempt} (permits, generate, deliver) and the event factories:
 *
 * ```
 * request$ ─expand─► request ─► runAttempt: stage permit ▸ global permit ▸ generate ▸ deliver ─► record ─► events
 *    ▲                                                                                              │
 *    └─ replacement request ◄─ timer(backoff), no permit ◄─ shortfall (failed, retryable, in budget) ◄┘
 * ```
 *
 * `request$` is exactly the unfilled slots the budget admits (on resume, numbers go on
 * from the recorded attempts and only charged attempts count). Each request runs under
 * the stage permit and, for the provider call only, the global adaptive permit. A
 * shortfall becomes a replacement request for the **same slot** after
 * `fullJitterBackoff`, outside every permit, and `expand` feeds it back: no barrier,
 * other slots and stages never wait for it. A non-retryable failure stops this stage's
 * new requests (queued ones are dropped unsent, in-flight ones finish); `auth` and
 * `quota_exhausted` halt the job. Errors never end the stream: each becomes an
 * `attempt:failed` event. The stream completes after `stage:completed` or
 * `stage:short` and the {@link StageResult}. A slot is filled at most once.
 *
 * ```
 * quantity 2; slot 0 answers at 3; slot 1 fails at 2 (retryable), backoff 3, then answers in 2:
 * frame       0   2 3   5   7
 * request$    01        1'              1' = slot 1's replacement
 * shortfall       1
 * events      ss  f d   s   dcR         s=attempt:started f=attempt:failed d=slot:delivered
 *                                       c=stage:completed R=the StageResult, then complete
 * ```
 *
 * Why the stage's limit is a permit (`stageLimiter`), not the `concurrent` argument of
 * `expand` or `mergeMap`: `expand` counts every inner it runs, and a backoff is an inner
 * of the same loop, so a slot waiting to retry would hold one of the stage's places
 * (rules 3 and 9 say it holds none). A `mergeMap(attempt, concurrent)` fed back through
 * a Subject keeps that rule but needs a hand-written end of the loop, and it subscribes
 * queued inners recursively: a halt drops every queued request synchronously, so a
 * stage with a few hundred queued requests overflows the stack and loses them silently,
 * and the job never ends (rxjs #3609; with rxjs 7.8 and an inner shaped like an attempt,
 * about 150 are enough). The limiter drains its queue in a loop and lets a queued
 * request leave without being started (guarded by test/engine/fill-slots-scale.test.ts).
 * The global limit is a permit anyway: it is shared by every stage and job, and adapts.
 */
export function fillSlots(config: FillSlotsConfig): Observable<StageItem> {
  return defer(() => {
    const { stage, job, scheduler, globalLimiter } = config;
    const ledger = new StageLedger(stage.index, stage.quantity, config.budget, config.state);
    const maxRetryAfterMs = config.backoff.maxRetryAfterMs ?? DEFAULT_MAX_RETRY_AFTER_MS;
    const stageStopped$ = new ReplaySubject<void>(1);
    const halt$ = merge(stageStopped$, job.halted$);
    // Set first thing on teardown: releasing an aborted attempt's permit must not start
    // a queued request of this same, dying stage.
    let closed = false;
    const halted = () => closed || ledger.stoppedBy !== null || job.haltedBy !== null || job.costCapped;
    const inFlight = new Map<number, SentAttempt>(); // by slot: what a cancel reports
    const requestOf = ({ slot, attempt }: SlotRequest): AttemptRequest => attemptRequestOf(job.jobId, stage, slot, attempt);

    // The spend cap: an attempt starts only if its estimate fits (reserved until it ends).
    const book = new StageCostBook(config.cost);
    const admit = book.admit;
    const priced = (request: AttemptRequest, ending: AttemptEnding): AttemptCost | undefined => book.priced(request, ending);

    // The books of one attempt item (ledger, job, global limit, cost), then its steps.
    const record = (item: AttemptItem): Step[] => {
      if (item.kind === 'dropped') {
        // Refused by the cap: the job starts no more attempts; in-flight ones finish.
        if (item.refused === true) job.capCost();
        return [];
      }
      const { request, permit, startedAt } = item.sent;
      const slot = request.slotIndex;
      if (item.kind === 'started') {
        ledger.start(slot, request.attempt);
        inFlight.set(slot, item.sent);
        return [eventStep(attemptStarted(request, startedAt))];
      }
      inFlight.delete(slot);
      const now = scheduler.now();
      if (item.kind === 'delivered') {
        globalLimiter.onSuccess();
        const attemptCost = priced(request, { usage: item.image.usage, answered: true, timedOut: false });
        const { attachId } = item.delivery;
        if (!ledger.deliver(slot, attachId)) return [];
        const delivered = { attachId, latencyMs: now - startedAt, providerLatencyMs: item.answeredAt - startedAt, usage: item.image.usage ?? null, cost: attemptCost, stageProgress: ledger.progress, progress: job.recordDelivery() };
        return [eventStep(slotDelivered(request, now, delivered))];
      }
      // A server delay above the cap means its quota is gone: `quota_exhausted`, which halts the job.
      const error = capRetryAfter(item.error, maxRetryAfterMs);
      // A failed delivery was an answered call (its image's usage); a failed answer carries its own.
      const usage = item.image?.usage ?? item.error.usage;
      const attemptCost = priced(request, { usage, answered: item.image !== undefined || usage !== undefined, timedOut: item.error.errorClass === 'timeout' });
      if (error.errorClass === 'rate_limited') globalLimiter.onRateLimited(permit);
      job.recordFailure(error.errorClass);
      const verdict = ledger.fail(slot, error, halted());
      if (verdict.stopsStage) stageStopped$.next();
      const shortfall: Extract<Step, { kind: 'shortfall' }> | null = verdict.replacement && {
        kind: 'shortfall',
        replacement: requestOf(verdict.replacement),
        delayMs: fullJitterBackoff(request.attempt, error.retryAfterMs, config.random, config.backoff),
      };
      const failed = attemptFailed(request, now, { error, latencyMs: now - startedAt, providerLatencyMs: item.answeredAt - startedAt, retryInMs: shortfall?.delayMs ?? null, usage, cost: attemptCost });
      return shortfall ? [eventStep(failed), shortfall] : [eventStep(failed)];
    };

    // The loop. A request becomes its attempt's steps; a shortfall becomes the same
    // slot's replacement request after its backoff: the attempt's permits ended with its
    // outcome, so the wait holds none and only this slot waits. A halt cancels the wait.
    const attemptConfig = { ...config, halt$, halted, admit };
    const next = (step: Step): Observable<Step> => {
      switch (step.kind) {
        case 'request':
          return runAttempt(step.request, attemptConfig).pipe(mergeMap(record));
        case 'shortfall':
          return timer(step.delayMs, scheduler).pipe(
            takeUntil(halt$),
            map((): Step => ({ kind: 'request', request: step.replacement })),
          );
        case 'event':
          return EMPTY;
      }
    };
    const request$ = from(ledger.initialRequests().map((r): Step => ({ kind: 'request', request: requestOf(r) })));
    const work$ = request$.pipe(
      expand(next),
      filter((step): step is Extract<Step, { kind: 'event' }> => step.kind === 'event'),
    );

    // Cancellation aborts in-flight attempts: each stage reports its own as `cancelled`
    // failures (the same event factory as any failure), then halts the job, then its work stops.
    const cancelInFlight = (emit: (item: StageItem) => void): void => {
      const now = scheduler.now();
      for (const { request, startedAt } of inFlight.values()) {
        emit({ kind: 'event', event: attemptFailed(request, now, { error: CANCELLED, latencyMs: now - startedAt, providerLatencyMs: null, retryInMs: null }) });
      }
      inFlight.clear();
      job.cancel();
    };
    const run$ = work$.pipe(untilCancelled({ cancel$: config.cancel$, onCancel: cancelInFlight, onClose: () => (closed = true) }));

    const finish$ = defer(() => {
      const result = ledger.result(job);
      return from<StageItem[]>([{ kind: 'event', event: stageEnded(job.jobId, scheduler.now(), result) }, { kind: 'result', result }]);
    });

    return concat(run$, finish$);
  });
}
