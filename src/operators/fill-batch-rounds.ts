import { EMPTY, Observable, ReplaySubject, catchError, concat, defaultIfEmpty, defer, expand, filter, from, map, merge, mergeMap, of, take, takeUntil, timer, type SchedulerLike } from 'rxjs';
import { PipelineError, toPipelineError } from '../domain/error-class.js';
import type { PipelineEvent } from '../domain/events.js';
import type { StageSpec } from '../domain/job-spec.js';
import { batchRequestKey, type AttemptRequest, type BatchResponse, type BatchRound, type BatchStagePorts, type BatchStatus } from '../domain/ports.js';

export type { BatchRound, BatchStagePorts } from '../domain/ports.js';
import type { RandomSource } from '../domain/random.js';
import type { StageState } from '../domain/resume-state.js';
import { attemptFailed, attemptRequestOf, attemptStarted, slotDelivered, stageEnded } from '../engine/attempt-events.js';
import { fullJitterBackoff, type BackoffConfig } from '../engine/full-jitter-backoff.js';
import type { JobControl } from '../engine/job-control.js';
import { StageLedger, type RetryBudget, type SlotRequest } from '../engine/stage-ledger.js';
import { StageCostBook, type AttemptEnding, type StageCost } from '../engine/cost-cap.js';
import type { AttemptCost } from '../domain/events.js';
import type { StageItem } from './fill-slots.js';
import { untilCancelled } from './until-cancelled.js';

/** How often a running batch is asked for its state: from `firstMs`, doubling, up to `maxMs`. */
export interface BatchPolling {
  readonly firstMs: number;
  readonly maxMs: number;
}

/** Batches take minutes to hours: a first look after 5 s, then at most every 2 minutes. */
export const DEFAULT_BATCH_POLLING: BatchPolling = Object.freeze({ firstMs: 5_000, maxMs: 120_000 });

/** A batch an earlier run sent and did not see end (resume): polled, not sent again. */
export interface OpenBatch {
  readonly round: number;
  /** Null when the provider's answer to the create was lost: the port finds it by its key. */
  readonly name: string | null;
  readonly requests: readonly AttemptRequest[];
}

export interface FillBatchRoundsConfig {
  readonly stage: StageSpec;
  readonly state: StageState;
  readonly ports: BatchStagePorts;
  readonly budget: RetryBudget;
  /** The wait before a round whose batch could not be created (a 429, a 5xx) is sent again. */
  readonly backoff: BackoffConfig;
  readonly job: JobControl;
  readonly cancel$: Observable<unknown>;
  readonly scheduler: SchedulerLike;
  readonly random: RandomSource;
  /** Default {@link DEFAULT_BATCH_POLLING}. */
  readonly polling?: BatchPolling | undefined;
  /** Deliveries of one finished batch in flight at once. Default 4. */
  readonly deliverConcurrency?: number | undefined;
  /** The batch an earlier run left running (resume). */
  readonly open?: OpenBatch | undefined;
  /**
   * Prices (at batch prices: the engine passes `batchPricing`) and the job's spend cap: a
   * round sends only the requests whose estimates fit the cap. Absent: nothing priced, no cap.
   */
  readonly cost?: StageCost | undefined;
}

type Step =
  | { readonly kind: 'event'; readonly event: PipelineEvent }
  | {
      readonly kind: 'round';
      readonly round: number;
      readonly requests: readonly AttemptRequest[];
      readonly name: string | null;
      readonly delayMs: number;
      /** The batch an earlier run sent (`config.open`): its attempts were started then. */
      readonly resumed: boolean;
    };

const eventStep = (event: PipelineEvent): Step => ({ kind: 'event', event });
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'expired']);
const CANCELLED = new PipelineError('cancelled', 'the job was cancelled');

/** The failure every request of a batch that ended without responses gets (retryable: the next round). */
function wholeBatchFailure(status: BatchStatus): PipelineError {
  const reason = status.error ? `: ${status.error}` : '';
  if (status.state === 'expired') return new PipelineError('timeout', `the batch ${status.name} expired before it ran${reason}`);
  if (status.state === 'cancelled') return new PipelineError('overloaded', `the batch ${status.name} was cancelled by the provider${reason}`);
  return new PipelineError('overloaded', `the batch ${status.name} failed as a whole${reason}`);
}

/**
 * Fills one stage's slots through the provider's batch API, in rounds: the slots owed go
 * out as one batch; once it ends, each response is delivered through the same delivery
 * transaction as an interactive attempt, and the failed or missing ones become the next
 * round's requests while the budget lasts (the same {@link StageLedger} as `fillSlots`:
 * the same per-slot and per-stage budget, the same shortfall reasons).
 *
 * ```
 * round 1 ─submit─► name ─poll─┬─(running)─ wait 5 s, 10 s, 20 s ... 2 min ─poll─┐
 *                              └─(succeeded)─► deliver each image ─► failed/missing ─► round 2 ─► ...
 * ```
 *
 * - A batch that fails whole or expires fails each of its attempts (retryable: the next
 *   round, within the budget). A create that fails (429, 5xx) fails them too; the next
 *   round waits its backoff (`fullJitterBackoff` of the first attempt, the server's
 *   RetryInfo first).
 * - Cancel: the batch is cancelled at the provider, its attempts end `cancelled`.
 *   A job halted by another stage (a quota, an auth failure, the spend cap) cancels this
 *   stage's batch too and sends no further round.
 * - Resume: `open` is polled where the earlier run left it; no second batch for its slots.
 *   The stage's other unfilled slots (their attempts ended in the earlier run, their
 *   replacements not yet sent) join the round after it.
 * - A shutdown (the job halted `cancelled` without being cancelled: `stop$`, a lost lease)
 *   leaves the batch running at the provider and its attempts `started`: the run that
 *   takes the job over polls the same batch. A cancel or another halt cancels it.
 * - Cost: each answer is priced from its usage at `cost.pricing` (batch prices); with a
 *   cap, a round sends only the requests whose estimates fit (the rest end `cost_cap`).
 *
 * Emits the same events as `fillSlots` (`attempt:started` when a round is sent, then
 * `attempt:failed` / `slot:delivered` as its batch is read), then the stage's end and its
 * {@link StageResult}.
 */
export function fillBatchRounds(config: FillBatchRoundsConfig): Observable<StageItem> {
  return defer(() => {
    const { stage, job, scheduler, ports } = config;
    const polling = config.polling ?? DEFAULT_BATCH_POLLING;
    const ledger = new StageLedger(stage.index, stage.quantity, config.budget, config.state);
    const stageStopped$ = new ReplaySubject<void>(1);
    const halted = () => ledger.stoppedBy !== null || job.haltedBy !== null || job.costCapped;
    // A shutdown, not a cancel: the batch stays at the provider for the run that takes over.
    const shuttingDown = () => job.haltedBy === 'cancelled' && !job.cancelled;
    // What gives the running batch up: a cancel, or a job-wide failure elsewhere (a quota, auth).
    // Not the spend cap (it stops new attempts; a batch sent within it is read), not a shutdown.
    const givesUp = () => job.haltedBy !== null && !shuttingDown();
    const givenUp$ = job.halted$.pipe(filter(() => job.haltedBy !== null));
    const book = new StageCostBook(config.cost);
    /** The requests of a round the spend cap lets out (each reserves its estimate); the rest cap the job. */
    const affordable = (requests: readonly AttemptRequest[]): readonly AttemptRequest[] => {
      const { admit } = book;
      if (admit === undefined) return requests;
      const refused = requests.findIndex((request) => !admit(request));
      if (refused === -1) return requests;
      job.capCost();
      return requests.slice(0, refused);
    };
    const priced = (request: AttemptRequest, ending: AttemptEnding): AttemptCost | undefined => book.priced(request, ending);
    const requestOf = ({ slot, attempt }: SlotRequest): AttemptRequest => attemptRequestOf(job.jobId, stage, slot, attempt);
    // The round being run: what a cancel or a halt reports and cancels.
    let current: { name: string | null; round: BatchRound; requests: readonly AttemptRequest[]; startedAt: number } | null = null;
    // Before the create has answered the name is null: the port finds the batch by its key.
    const cancelCurrent = (): void => {
      if (current !== null) ports.cancel(current.name, current.round).subscribe({ error: () => undefined });
    };

    /** A failed attempt's books: its event, and the slot's next attempt when the budget allows. */
    const fail = (request: AttemptRequest, error: PipelineError, replacements: AttemptRequest[]): Step => {
      const now = scheduler.now();
      job.recordFailure(error.errorClass);
      const verdict = ledger.fail(request.slotIndex, error, halted());
      if (verdict.stopsStage) stageStopped$.next();
      if (verdict.replacement) replacements.push(requestOf(verdict.replacement));
      const startedAt = current?.startedAt ?? now;
      const attemptCost = priced(request, { usage: error.usage, answered: error.usage != null, timedOut: false });
      return eventStep(attemptFailed(request, now, { error, latencyMs: now - startedAt, providerLatencyMs: now - startedAt, retryInMs: verdict.replacement ? 0 : null, usage: error.usage, cost: attemptCost }));
    };

    /** An attempt whose batch was given up (a cancel, a halt): ended, not charged, no replacement. */
    const cancelled = (request: AttemptRequest): Step => {
      const now = scheduler.now();
      priced(request, { usage: undefined, answered: false, timedOut: false });
      const startedAt = current?.startedAt ?? now;
      return eventStep(attemptFailed(request, now, { error: CANCELLED, latencyMs: now - startedAt, providerLatencyMs: null, retryInMs: null }));
    };

    const deliverOne = (request: AttemptRequest, response: BatchResponse | undefined, replacements: AttemptRequest[]): Observable<Step> => {
      if (response === undefined) return of(fail(request, new PipelineError('no_image', 'the batch ended with no response for this request'), replacements));
      if ('error' in response) return of(fail(request, response.error, replacements));
      return ports.deliver(request, response.image).pipe(
        map((delivery): Step | null => {
          const attemptCost = priced(request, { usage: response.image.usage, answered: true, timedOut: false });
          if (!ledger.deliver(request.slotIndex, delivery.attachId)) return null;
          const now = scheduler.now();
          const startedAt = current?.startedAt ?? now;
          return eventStep(
            slotDelivered(request, now, {
              attachId: delivery.attachId,
              latencyMs: now - startedAt,
              providerLatencyMs: now - startedAt,
              usage: response.image.usage ?? null,
              cost: attemptCost,
              stageProgress: ledger.progress,
              progress: job.recordDelivery(),
            }),
          );
        }),
        filter((step): step is Step => step !== null),
        catchError((error: unknown) => of(fail(request, toPipelineError(error, 'storage'), replacements))),
      );
    };

    /** Waits for the batch to end: polls at `firstMs`, doubling up to `maxMs`; a failed poll is tried again on the same schedule. */
    const ended = (name: string, round: BatchRound): Observable<BatchStatus> => {
      const look = (n: number): Observable<{ n: number; status: BatchStatus | null }> =>
        defer(() => ports.poll(name, round)).pipe(
          map((status) => ({ n, status })),
          catchError((error: unknown) => {
            const e = toPipelineError(error, 'network');
            // A poll refused for good (the key, the request): every request of the batch fails with it.
            if (!e.retryable) throw e;
            return of({ n, status: null });
          }),
        );
      return look(0).pipe(
        expand(({ n, status }) => (status !== null && TERMINAL.has(status.state) ? EMPTY : timer(Math.min(polling.maxMs, polling.firstMs * 2 ** n), scheduler).pipe(mergeMap(() => look(n + 1))))),
        map(({ status }) => status),
        filter((status): status is BatchStatus => status !== null && TERMINAL.has(status.state)),
        take(1),
      );
    };

    /** One round: send (or find again), wait for the end, read the responses; then the next round, if any. */
    const runRound = (step: Extract<Step, { kind: 'round' }>): Observable<Step> =>
      defer(() => {
        if (halted() || step.requests.length === 0) return EMPTY;
        // A resumed batch's attempts were started (and charged) by the run that sent it.
        const requests = step.resumed ? step.requests : affordable(step.requests);
        if (requests.length === 0) return EMPTY;
        const replacements: AttemptRequest[] = [];
        const startedAt = scheduler.now();
        const round: BatchRound = { stageIndex: stage.index, round: step.round, requests, ...(step.resumed ? { resumed: true } : {}) };
        current = { name: step.name, round, requests, startedAt };
        const starts: Step[] = step.resumed
          ? []
          : requests.map((request) => {
              ledger.start(request.slotIndex, request.attempt);
              return eventStep(attemptStarted(request, startedAt));
            });
        // Resumed with no name: the create's answer was lost; `submit` finds the batch by its key first.
        const name$ = step.name !== null ? of(step.name) : ports.submit(round);
        // Set when the batch could not be sent: the next round waits its backoff.
        let sendError: PipelineError | null = null;
        const read$ = name$.pipe(
          catchError((error: unknown) => {
            sendError = toPipelineError(error, 'network');
            throw sendError;
          }),
          mergeMap((name) => {
            if (current) current = { ...current, name };
            // A cancel or a job-wide failure elsewhere (a quota, auth) stops the wait: the batch is
            // cancelled at the provider (below) and its attempts end `cancelled`. A shutdown stops
            // it too but leaves the batch as it is; the spend cap does not stop it.
            return ended(name, round).pipe(takeUntil(givenUp$), defaultIfEmpty(null));
          }),
          mergeMap((status) =>
            status === null
              ? shuttingDown()
                ? EMPTY // left running at the provider, its attempts `started`: the next run polls it
                : from(requests.map((request) => cancelled(request)))
              : status.state === 'succeeded'
              ? defer(() => {
                  const byKey = new Map((status.responses ?? []).map((r) => [r.key, r]));
                  return from(requests).pipe(mergeMap((request) => deliverOne(request, byKey.get(batchRequestKey(request)), replacements), config.deliverConcurrency ?? 4));
                })
              : from(requests.map((request) => fail(request, wholeBatchFailure(status), replacements))),
          ),
          // The batch could not be sent or read: each of its attempts failed with that error.
          catchError((error: unknown) => {
            const e = toPipelineError(error, 'network');
            return from(requests.map((request) => fail(request, e, replacements)));
          }),
        );
        const next$ = defer((): Observable<Step> => {
          current = null;
          // After a resumed round: the slots the earlier run left without an attempt out join the next one.
          if (step.resumed) replacements.push(...leftover);
          if (replacements.length === 0 || halted()) return EMPTY;
          // A round that never reached the provider (create refused) waits its backoff; one that ran goes at once.
          const failedSend = sendError as PipelineError | null;
          const delayMs = failedSend !== null ? fullJitterBackoff(requests[0]?.attempt ?? 1, failedSend.retryAfterMs, config.random, config.backoff) : 0;
          return of<Step>({ kind: 'round', round: step.round + 1, requests: replacements, name: null, delayMs, resumed: false });
        });
        return concat(step.resumed ? EMPTY : from(starts), read$, next$);
      });

    const open = config.open;
    // Resume: the open batch's slots have their attempt out; the stage's other unfilled slots follow it.
    const leftover: AttemptRequest[] = open !== undefined ? ledger.initialRequests(new Set(open.requests.map((r) => r.slotIndex))).map(requestOf) : [];
    const first: Step =
      open !== undefined
        ? { kind: 'round', round: open.round, requests: open.requests, name: open.name, delayMs: 0, resumed: true }
        : { kind: 'round', round: 1, requests: ledger.initialRequests().map(requestOf), name: null, delayMs: 0, resumed: false };
    const halt$ = merge(stageStopped$, job.halted$);
    const work$ = of(first).pipe(
      expand((step) =>
        step.kind === 'round'
          ? (step.delayMs > 0 ? timer(step.delayMs, scheduler).pipe(takeUntil(halt$), mergeMap(() => runRound(step))) : runRound(step))
          : EMPTY,
      ),
      filter((step): step is Extract<Step, { kind: 'event' }> => step.kind === 'event'),
      map((step): StageItem => ({ kind: 'event', event: step.event })),
    );
    // A halt by another stage (quota, auth, spend cap) stops this stage's batch at the provider too.
    const haltSubscription = job.halted$.subscribe(() => {
      if (givesUp()) cancelCurrent();
    });

    const cancelInFlight = (emit: (item: StageItem) => void): void => {
      cancelCurrent();
      for (const request of current?.requests ?? []) {
        const step = cancelled(request);
        if (step.kind === 'event') emit(step);
      }
      current = null;
      job.cancel();
    };
    const run$ = work$.pipe(untilCancelled({ cancel$: config.cancel$, onCancel: cancelInFlight, onClose: () => haltSubscription.unsubscribe() }));
    const finish$ = defer(() => {
      haltSubscription.unsubscribe();
      const result = ledger.result(job);
      return from<StageItem[]>([{ kind: 'event', event: stageEnded(job.jobId, scheduler.now(), result) }, { kind: 'result', result }]);
    });
    return concat(run$, finish$);
  });
}
