import {
  AsyncSubject,
  EMPTY,
  NEVER,
  Observable,
  asyncScheduler,
  concat,
  defer,
  filter,
  map,
  merge,
  mergeMap,
  of,
  take,
  tap,
  throwError,
  toArray,
  type SchedulerLike,
} from 'rxjs';
import type { JobFinishedEvent, JobStartedEvent, PipelineEvent } from '../domain/events.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { BatchStagePorts, EnginePorts } from '../domain/ports.js';
import { PipelineError } from '../domain/error-class.js';
import { seededRandom, type RandomSource } from '../domain/random.js';
import { freshStageState, type StageState } from '../domain/resume-state.js';
import { jobStatusOf, type JobResult, type StageResult } from '../domain/result.js';
import { AdaptiveConcurrencyLimiter } from '../engine/adaptive-concurrency-limiter.js';
import { ConcurrencyLimiter, UNKEYED_SHARE } from '../engine/concurrency-limiter.js';
import type { Share } from '../engine/fair-queue.js';
import type { ProviderLimiter } from '../engine/provider-limiter.js';
import { JobControl } from '../engine/job-control.js';
import { fillSlots, type StageCost, type StageItem } from '../operators/fill-slots.js';
import { fillBatchRounds, type BatchPolling, type OpenBatch } from '../operators/fill-batch-rounds.js';
import { CostCap } from '../engine/cost-cap.js';
import { batchPricing, pricingFor, type AttemptPricing } from '../domain/price-table.js';
import { DEFAULT_BACKOFF, type BackoffConfig } from '../engine/full-jitter-backoff.js';

/** The part of a job the engine needs. */
export interface EngineJob {
  readonly jobId: string;
  readonly stages: readonly StageSpec[];
  /** Per stage, what is already filled and spent (resume). Omitted: a fresh job. */
  readonly state?: readonly StageState[] | undefined;
  /** Whose job it is, for the fair share of a shared `globalLimiter`: users take turns. Default `''`. */
  readonly userId?: string | undefined;
  /** A higher priority gets the shared limiter's permits first. Default 0. */
  readonly priority?: number | undefined;
  /**
   * The job's spend cap, USD (`JobSpec.maxCostUsd`): an attempt whose estimate would pass
   * it is not started and the short stages end `cost_cap`. Needs `EngineOptions.pricing`
   * (without prices, or with a model that has none, no attempt starts). Omitted: no cap.
   */
  readonly maxCostUsd?: number | undefined;
  /** What earlier runs of the job spent, USD (resume: read from the attempts table). Default 0. */
  readonly spentUsd?: number | undefined;
  /** Per stage index, the batch an earlier run left running (resume of a `mode: "batch"` stage). */
  readonly openBatches?: readonly (OpenBatch | undefined)[] | undefined;
}

/** Engine settings; every field has a default. */
export interface EngineOptions {
  /** Attempts in flight per stage. Default 4. */
  readonly stageConcurrency?: number;
  /** Attempts in flight across all stages, when no `globalLimiter` is given. Default 8. */
  readonly globalConcurrency?: number;
  /**
   * Share one limiter between jobs (a worker does) so a provider key's limit is respected;
   * its permits go by fair share (the job's `priority`, then users, then jobs take turns).
   */
  readonly globalLimiter?: ProviderLimiter;
  /**
   * `false`: every job waits for the shared limiter's permits first come, first served (no
   * turns by priority, user or job), as before fair share existed; for comparisons
   * (`IMAGEGEN_FAIR_SHARE=off`, bench/fleet.ts). Default true.
   */
  readonly fairShare?: boolean;
  /** Attempts one slot may use, the first included. Default 5. */
  readonly maxAttemptsPerSlot?: number;
  /** Replacement attempts per stage: a number, or a function of the stage quantity. Default `max(10, quantity)`. */
  readonly maxReplacementsPerStage?: number | ((quantity: number) => number);
  /** Safety blocks in a row that stop a stage (shortfall `safety_blocked`). Default `DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE` (3). */
  readonly maxSafetyBlocksPerStage?: number;
  readonly backoff?: BackoffConfig;
  /** A `generate` call that has not answered after this long is a `timeout` failure. Default 120,000 ms. */
  readonly attemptTimeoutMs?: number;
  /** Emits to cancel: no new attempts, in-flight ones are aborted, the job ends `cancelled`. */
  readonly cancel$?: Observable<unknown>;
  /**
   * Emits to stop taking new slots (shutdown): in-flight attempts finish, then the
   * stages end short with `job_aborted` / `cancelled`. The caller decides what that
   * means for the job (a worker hands it back for resume).
   */
  readonly stop$?: Observable<unknown>;
  /** Time source for backoff, timeouts and event timestamps. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
  /** Jitter source. Default a PRNG seeded from the clock. */
  readonly random?: RandomSource;
  /** Prices of the generator's model: each attempt's end event carries its cost (`cost`), and the spend cap can be kept. Default: none. */
  readonly pricing?: AttemptPricing | undefined;
  /** How often a batch stage's running batch is polled. Default `DEFAULT_BATCH_POLLING` (5 s doubling to 2 min). */
  readonly batchPolling?: BatchPolling | undefined;
}

/**
 * The ports of a batch stage on a generator without a batch API (Vertex AI, or a host's
 * generator given without one): the create is refused, so the stage ends short
 * `non_retryable` / `invalid_request` saying why, with nothing sent.
 */
const NO_BATCH_API: BatchStagePorts = Object.freeze({
  submit: () => throwError(() => new PipelineError('invalid_request', 'mode "batch" needs the provider\'s batch API, and this generator has none (Vertex AI batches are not supported; a host passes one as `batches`)')),
  poll: () => EMPTY,
  cancel: () => EMPTY,
  deliver: () => throwError(() => new PipelineError('invalid_request', 'no batch API')),
});

/**
 * A stage's own limit when none is given: 4, but never above the global limit (a stage
 * permit beyond it would only queue). The one owner of this rule; `loadConfig` uses it too.
 */
export function defaultStageConcurrency(globalConcurrency: number): number {
  return Math.min(DEFAULT_ENGINE_OPTIONS.stageConcurrency, globalConcurrency);
}

export const DEFAULT_ENGINE_OPTIONS = Object.freeze({
  stageConcurrency: 4,
  globalConcurrency: 8,
  maxAttemptsPerSlot: 5,
  maxReplacementsPerStage: (quantity: number) => Math.max(10, quantity),
  attemptTimeoutMs: 120_000,
  backoff: DEFAULT_BACKOFF,
});

/**
 * Runs a job: every stage concurrently, each filling exactly its slots, and emits
 * typed events ending with exactly one `job:finished` that carries the
 * {@link JobResult}.
 *
 * Stages start together (stage 2's first request is not delayed by stage 1) and
 * share the global limit. Their results are merged with `concat` in stage order
 * (then slot order) even when a later stage finishes first: the stage streams run
 * eagerly and `concat` only reads their final results.
 *
 * The Observable is cold: each subscription runs the job once. Unsubscribing aborts
 * in-flight attempts; use `cancel$` to end with a `cancelled` result instead.
 *
 * ```
 * stage 0  ──s──d──s──d──|
 * stage 1  ──s──d|
 * events   S─ss─dd─s──d──(CF)      F = job:finished, attach ids [stage 0..., stage 1...]
 * ```
 *
 * @example
 * runEngine({ jobId: 'j1', stages }, { generate, deliver }, { stageConcurrency: 4 })
 *   .subscribe((event) => console.log(event.type));
 */
export function runEngine(job: EngineJob, ports: EnginePorts, options: EngineOptions = {}): Observable<PipelineEvent> {
  return defer(() => {
    const scheduler = options.scheduler ?? asyncScheduler;
    const random = options.random ?? seededRandom(Date.now());
    const globalLimiter =
      options.globalLimiter ?? new AdaptiveConcurrencyLimiter({ max: options.globalConcurrency ?? DEFAULT_ENGINE_OPTIONS.globalConcurrency });
    const stageConcurrency = options.stageConcurrency ?? defaultStageConcurrency(globalLimiter.max);
    const replacements = options.maxReplacementsPerStage ?? DEFAULT_ENGINE_OPTIONS.maxReplacementsPerStage;
    const states = job.stages.map((stage, i) => job.state?.[i] ?? freshStageState(stage.quantity));
    states.forEach((state, i) => {
      if (state.length !== job.stages[i]!.quantity) {
        throw new RangeError(`resume state of stage ${i} has ${state.length} slots, the stage has quantity ${job.stages[i]!.quantity}`);
      }
    });
    const total = job.stages.reduce((sum, s) => sum + s.quantity, 0);
    const already = states.reduce((sum, state) => sum + state.filter((s) => s.attachId !== null).length, 0);
    const control = new JobControl(job.jobId, total, already);
    const cap = job.maxCostUsd !== undefined ? new CostCap(job.maxCostUsd, job.spentUsd ?? 0) : null;
    // A cap with no prices cannot be checked: priced by an empty table, every estimate is null and no attempt starts.
    const pricing = options.pricing ?? (cap !== null ? pricingFor({}, '(no prices)') : undefined);
    const cost: StageCost | undefined = pricing === undefined ? undefined : { pricing, cap };
    const cancel$ = options.cancel$ ?? NEVER;
    const share: Share = options.fairShare === false ? UNKEYED_SHARE : { userId: job.userId ?? '', jobId: job.jobId, priority: job.priority ?? 0 };

    const started: JobStartedEvent = {
      type: 'job:started',
      jobId: job.jobId,
      at: scheduler.now(),
      totalImages: total,
      deliveredImages: already,
      stages: job.stages.map((s, i) => ({
        index: s.index,
        quantity: s.quantity,
        delivered: states[i]!.filter((slot) => slot.attachId !== null).length,
      })),
    };

    // Each stage's result lands in its own AsyncSubject; `concat` reads them in stage order.
    const results = job.stages.map(() => new AsyncSubject<StageResult>());
    const budgetOf = (stage: StageSpec) => ({
      maxAttemptsPerSlot: options.maxAttemptsPerSlot ?? DEFAULT_ENGINE_OPTIONS.maxAttemptsPerSlot,
      maxReplacementsPerStage: typeof replacements === 'function' ? replacements(stage.quantity) : replacements,
      ...(options.maxSafetyBlocksPerStage !== undefined ? { maxSafetyBlocksInRow: options.maxSafetyBlocksPerStage } : {}),
    });
    const backoff = options.backoff ?? DEFAULT_ENGINE_OPTIONS.backoff;
    // A batch stage: rounds through the batch API, at batch prices, under the same budget rules.
    const runStage = (stage: StageSpec, state: StageState): Observable<StageItem> => {
      if (stage.mode !== 'batch') {
        return fillSlots({
          stage,
          state,
          ports,
          budget: budgetOf(stage),
          backoff,
          attemptTimeoutMs: options.attemptTimeoutMs ?? DEFAULT_ENGINE_OPTIONS.attemptTimeoutMs,
          stageLimiter: new ConcurrencyLimiter(stageConcurrency),
          globalLimiter,
          share,
          job: control,
          cancel$,
          scheduler,
          random,
          cost,
        });
      }
      return fillBatchRounds({
        stage,
        state,
        ports: ports.batch ?? NO_BATCH_API,
        budget: budgetOf(stage),
        backoff,
        job: control,
        cancel$,
        scheduler,
        random,
        polling: options.batchPolling,
        open: job.openBatches?.[stage.index],
        cost: cost === undefined ? undefined : { pricing: batchPricing(cost.pricing), cap: cost.cap },
      });
    };
    const stageRuns = job.stages.map((stage, i) =>
      runStage(stage, states[i]!).pipe(
        tap((item: StageItem) => {
          if (item.kind === 'result') {
            results[i]!.next(item.result);
            results[i]!.complete();
          }
        }),
        filter((item): item is Extract<StageItem, { kind: 'event' }> => item.kind === 'event'),
        map((item) => item.event),
      ),
    );

    const finished$ = concat(...results).pipe(
      toArray(),
      mergeMap((stages) => {
        const attachIds = stages.flatMap((s) => s.attachIds);
        const result: JobResult = {
          jobId: job.jobId,
          status: jobStatusOf(stages, control.cancelled),
          totalImages: total,
          deliveredImages: attachIds.length,
          attachIds,
          stages,
        };
        const finished: JobFinishedEvent = {
          type: 'job:finished',
          jobId: job.jobId,
          at: scheduler.now(),
          status: result.status,
          attachIds,
          result,
        };
        return of(finished);
      }),
    );

    const run$ = concat(of<PipelineEvent>(started), merge(...stageRuns), finished$);
    const stop$ = options.stop$;
    if (!stop$) return run$;
    return new Observable<PipelineEvent>((subscriber) => {
      const stopSubscription = stop$.pipe(take(1)).subscribe(() => control.halt('cancelled'));
      const runSubscription = run$.subscribe(subscriber);
      return () => {
        runSubscription.unsubscribe();
        stopSubscription.unsubscribe();
      };
    });
  });
}
