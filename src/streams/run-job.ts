import { EMPTY, concatMap, defer, identity, mergeAll, of, tap, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import type { JobFinishedEvent, PipelineEvent } from '../domain/events.js';
import { attemptRequestOf } from '../engine/attempt-events.js';
import type { BatchGenerator, ImageGenerator } from '../domain/ports.js';
import { FINAL_JOB_STATUSES, JobNotFoundError, beginRun, getJobStatus, jobStats, loadJob, newLeaseOwner, openBatches, reopenJob, retryTransient, type Database, type LoadedJob, type StoredBatch } from '../db/index.js';
import type { ProviderLimiter } from '../engine/provider-limiter.js';
import { DEFAULT_PRICES, pricingFor, type AttemptPricing } from '../domain/price-table.js';
import { AttemptLog, RUN_ATTEMPT_RECORD_GAP_MS } from '../sinks/attempt-log.js';
import type { RunMetrics } from '../sinks/metrics.js';
import type { ObjectStore } from '../sinks/object-store.js';
import { sweepOrphans } from '../sinks/orphan-sweep.js';
import { DEFAULT_PROGRESS_INTERVAL_MS, progressWriter, RUN_PUBLISH_GAP_MS } from '../sinks/progress-writer.js';
import { controlSignals, type ControlSignals } from '../sources/control-signals.js';
import { runEngine, type EngineOptions } from './engine.js';
import { usingJobLease, type JobLease } from './job-lease-scope.js';
import { endCrashLoop, finishRun, handBackRun, replayFinished } from './run-endings.js';
import { storedPorts } from './stored-ports.js';
import type { WebpCodec } from '../adapters/image-codec.js';
import { openBatchesByStage } from './stored-batch-ports.js';

/** What running a stored job needs: the database, the object store, a generator. */
export interface RunJobDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
  /** The provider's batch API, for stages of `mode: "batch"` (without it such a job fails to start). */
  readonly batches?: BatchGenerator | undefined;
  /** Shared by every job of a process, so one API key's limit is respected. */
  readonly limiter?: ProviderLimiter | undefined;
  readonly logger?: Logger | undefined;
  /** The process's metrics, fed the run's events (`PipelineMetrics`); none: nothing is counted. */
  readonly metrics?: RunMetrics | undefined;
  /**
   * The prices of the generator's model (`pricingFor(config.prices, generator.model)`): each
   * attempt's cost is recorded and a job's `maxCostUsd` is kept. None: a job with a cap is
   * priced by the default table (`DEFAULT_PRICES`) for `generator.model`.
   */
  readonly pricing?: AttemptPricing | undefined;
  /** The WebP conversion of deliveries (`ThreadedWebpCodec`: in the image thread); none: `toWebp` in this thread. */
  readonly codec?: WebpCodec | undefined;
}

/** Per-run options on top of the engine's. */
export interface RunJobOptions extends Omit<EngineOptions, 'globalLimiter' | 'cancel$'> {
  /** Cancels the job: in-flight attempts are aborted and the job ends `cancelled`. */
  readonly cancel$?: Observable<unknown>;
  /**
   * Shutdown: stop taking new slots, let in-flight attempts finish, then hand the job
   * back (`queued`) for another worker, unless it completed meanwhile. After
   * `graceMs` the attempts still in flight are aborted.
   */
  readonly stop$?: Observable<unknown>;
  /** Default {@link DEFAULT_RUN_OPTIONS}`.graceMs` (30,000 ms). */
  readonly graceMs?: number;
  /** WebP quality of stored images. Default `DEFAULT_WEBP_QUALITY` of the image codec (80). */
  readonly webpQuality?: number;
  /** Least time between two progress writes of the job row. Default 250 ms. */
  readonly progressIntervalMs?: number;
  /** How often the job row is checked for a cancel request from another process. Default 500 ms. */
  readonly cancelPollMs?: number;
  /** This run's lease owner id. Default a fresh `host:pid:uuid`. */
  readonly leaseOwner?: string;
  /** How long the lease lasts without renewal (it is renewed every third of it). Default 15,000 ms. */
  readonly leaseTtlMs?: number;
  /** Runs that may die in a row without delivering before the job ends `crash_loop`. Default 5. */
  readonly maxCrashResumes?: number;
}

/** The defaults of {@link RunJobOptions}, owned here (the WebP quality's owner is the image codec). */
export const DEFAULT_RUN_OPTIONS = Object.freeze({
  graceMs: 30_000,
  progressIntervalMs: DEFAULT_PROGRESS_INTERVAL_MS,
  cancelPollMs: 500,
  leaseTtlMs: 15_000,
  maxCrashResumes: 5,
});

/**
 * Runs (or resumes) a job that is already in the database and emits its events.
 *
 * Before the first attempt it rebuilds the engine's state from the tables (filled
 * slots, attempts charged per slot: the budget is not reset, but attempts a dead run
 * left unfinished are `abandoned` and cost nothing; after `maxCrashResumes` dead runs
 * in a row without a delivery the job ends with `crash_loop`) and deletes the job's
 * orphan objects (uploaded by an attempt whose delivery never committed). Each
 * attempt is recorded before the provider is called; each delivery is one database
 * transaction (attach record, slot, credit capture, counters). Progress is written
 * coalesced and published with NOTIFY. `job:finished` is emitted after `finishJob`
 * committed (status, merged ids, release of the unused reservation).
 *
 * A job that already ended emits only its `job:finished` again, with no provider call.
 * A job handed back by `stop$` emits no `job:finished`.
 *
 * ```
 * status ─► ended? ── yes ─► sweep (warn) ─► job:finished again
 *             │ no (or reopened)
 *             ▼
 * lease ─[ sweep (refuse) ─► beginRun ─► loadJob ─► engine ─► finish | hand back ]─ released
 * events                                            S──s──d──...──F
 * ```
 */
export function runStoredJob(deps: RunJobDeps, jobId: string, options: RunJobOptions = {}): Observable<PipelineEvent> {
  return defer(async () => {
    const { database, store, generator, batches, limiter, metrics, codec } = deps;
    const pricing = deps.pricing ?? (generator.model !== undefined ? pricingFor(DEFAULT_PRICES, generator.model) : undefined);
    const run: RunContext = { database, store, generator, batches, limiter, metrics, pricing, codec, logger: deps.logger?.child({ jobId }), jobId, options };
    // The status decides the path; the full state is loaded once, after `beginRun`.
    const status = await retryTransient(() => getJobStatus(database, jobId));
    if (status === null) throw new JobNotFoundError(jobId);
    if (FINAL_JOB_STATUSES.includes(status)) {
      // A job that ended short only because a dead run's attempts were charged to its
      // budget (before attempts could be abandoned) goes on; any other is replayed.
      const reopened = await retryTransient(() => reopenJob(database, jobId));
      if (!reopened) {
        // An ended job's runs are over: what its last sweep could not remove goes now.
        await sweepOrphans(run, jobId, 'warn');
        return replayFinished(run);
      }
      run.logger?.warn({ ...reopened }, 'job ended short only because of abandoned attempts: reopened with its budget recomputed');
    }
    // One runner per job: the orphan sweep at the start must never race another runner's upload.
    const leaseConfig = { owner: options.leaseOwner ?? newLeaseOwner(), ttlMs: options.leaseTtlMs ?? DEFAULT_RUN_OPTIONS.leaseTtlMs, logger: run.logger };
    return usingJobLease(database, jobId, leaseConfig, (lease) => runLeased(run, lease));
  }).pipe(mergeAll());
}

/** One run of one job: its parts, its options, and a logger that names the job. */
interface RunContext {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
  readonly batches: BatchGenerator | undefined;
  readonly limiter: ProviderLimiter | undefined;
  readonly metrics: RunMetrics | undefined;
  readonly pricing: AttemptPricing | undefined;
  readonly codec: WebpCodec | undefined;
  readonly logger: Logger | undefined;
  readonly jobId: string;
  readonly options: RunJobOptions;
}

/**
 * The run under its lease, up to the engine: orphans of dead runs swept, the run begun
 * (`beginRun`: dead runs' attempts abandoned, crash streak counted), the state loaded.
 * Any error here ends the lease scope, which gives the lease back at once.
 */
function runLeased(run: RunContext, lease: JobLease): Observable<PipelineEvent> {
  return defer(async () => {
    const { database, jobId, logger } = run;
    // Orphans of dead runs go first, before `beginRun`: a storage that does not answer
    // (after retries) refuses the run with the job as it was: resumable, no crash counted.
    await sweepOrphans(run, jobId, 'refuse');
    const began = await retryTransient(() => beginRun(database, jobId));
    const job = await retryTransient(() => loadJob(database, jobId));
    if (!job) throw new JobNotFoundError(jobId);
    if (began.previousRunDied || began.abandoned > 0) {
      logger?.warn({ abandoned: began.abandoned, crashResumes: began.crashResumes }, 'resuming after a run that died: its unfinished attempts are abandoned (no budget charged)');
    }
    const maxCrashResumes = run.options.maxCrashResumes ?? DEFAULT_RUN_OPTIONS.maxCrashResumes;
    // A cancel request wins: the job ends `cancelled`, as its user asked.
    if (began.crashResumes >= maxCrashResumes && !job.cancelRequested) return endCrashLoop(run, lease, job, began.crashResumes);
    // The cap counts what earlier runs of the job spent (answers and possibly billed timeouts).
    const spentUsd = job.spec.maxCostUsd === undefined ? 0 : await retryTransient(() => jobStats(database, { jobId })).then((s) => s.costUsd + s.possiblyBilled.usd);
    if (job.spec.maxCostUsd !== undefined && run.pricing?.priced !== true) {
      logger?.warn({ model: run.pricing?.model ?? null }, 'the model has no price (IMAGEGEN_PRICES): a job with maxCostUsd starts no attempt; add the model to the price table');
    }
    // Batch stages: the batches an earlier run sent and did not see end are polled again, not sent twice.
    const open = job.spec.stages.some((s) => s.mode === 'batch') ? await retryTransient(() => openBatches(database, jobId)) : [];
    if (open.length > 0) logger?.info({ batches: open.map((b) => ({ stage: b.stageIndex, round: b.round, batch: b.name, requests: b.requests.length })) }, 'resuming batches an earlier run sent');
    return runStages(run, lease, job, spentUsd, open);
  }).pipe(mergeAll());
}

/**
 * The engine over the stored ports, stopped or cancelled by the control signals; every
 * attempt's end is logged, progress is written, and `job:finished` settles the run.
 */
function runStages(run: RunContext, lease: JobLease, job: LoadedJob, spentUsd: number, open: readonly StoredBatch[]): Observable<PipelineEvent> {
  const { database, jobId, options, logger } = run;
  const signals = controlSignals({
    database,
    jobId,
    cancelRequested: job.cancelRequested,
    cancel$: options.cancel$,
    stop$: options.stop$,
    leaseLost$: lease.lost$,
    cancelPollMs: options.cancelPollMs ?? DEFAULT_RUN_OPTIONS.cancelPollMs,
    graceMs: options.graceMs ?? DEFAULT_RUN_OPTIONS.graceMs,
    logger,
  });
  const attemptLog = new AttemptLog(database, logger, { gapMs: RUN_ATTEMPT_RECORD_GAP_MS });
  const ports = storedPorts({ ...run, lease: { owner: lease.owner, lost: () => lease.markLost() } }, { jobId, stages: job.spec.stages }, { webpQuality: options.webpQuality });
  const engineOptions: EngineOptions = { ...options, globalLimiter: run.limiter, cancel$: signals.cancel$, stop$: signals.stop$, pricing: run.pricing };
  const openByStage = openBatchesByStage(job.spec.stages, open, (stage, slot, attempt) => attemptRequestOf(jobId, stage, slot, attempt));
  const engineJob = { jobId, stages: job.spec.stages, state: job.stages, userId: job.spec.userId, priority: job.spec.priority ?? 0, maxCostUsd: job.spec.maxCostUsd, spentUsd, openBatches: openByStage };
  return runEngine(engineJob, ports, engineOptions).pipe(
    tap((event) => attemptLog.record(event, signals.stopped)),
    run.metrics ? run.metrics.observeRun(() => signals.stopped) : identity,
    progressWriter(database, {
      intervalMs: options.progressIntervalMs ?? DEFAULT_RUN_OPTIONS.progressIntervalMs,
      publishGapMs: RUN_PUBLISH_GAP_MS,
      onError: (error) => logger?.warn({ err: error }, 'progress write failed'),
    }),
    concatMap((event) => (event.type === 'job:finished' ? settleRun(run, lease, event, attemptLog, signals) : of(event))),
  );
}

/**
 * The end of a run, once every attempt's record is written (so statistics are complete):
 * a run that was stopped and did not complete is handed back and emits nothing; any
 * other is finished and emits `job:finished` after the commit.
 */
function settleRun(run: RunContext, lease: JobLease, event: JobFinishedEvent, attemptLog: AttemptLog, signals: ControlSignals): Observable<PipelineEvent> {
  return defer(async () => {
    await attemptLog.flush();
    if (signals.stopped && event.status !== 'completed') {
      await handBackRun(run, lease, event);
      return EMPTY;
    }
    await finishRun(run, lease, event);
    return of(event);
  }).pipe(mergeAll());
}
