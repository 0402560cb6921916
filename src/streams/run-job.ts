import {
  EMPTY,
  Observable,
  ReplaySubject,
  concat,
  catchError,
  concatMap,
  exhaustMap,
  defer,
  filter,
  finalize,
  firstValueFrom,
  from,
  ignoreElements,
  interval,
  map,
  merge,
  mergeMap,
  of,
  share,
  switchMap,
  take,
  takeUntil,
  tap,
  timer,
} from 'rxjs';
import type { Logger } from 'pino';
import { PipelineError, toPipelineError } from '../domain/error-class.js';
import type { JobFinishedEvent, PipelineEvent } from '../domain/events.js';
import { endedResult } from '../domain/result.js';
import type { AttemptRequest, Delivery, EnginePorts, GeneratedImage, ImageGenerator, InputImage } from '../domain/ports.js';
import type { Database } from '../db/database.js';
import { JobNotFoundError } from '../db/errors.js';
import { deliverSlot } from '../db/ops/deliver-slot.js';
import { finishAttempt } from '../db/ops/finish-attempt.js';
import { finishJob } from '../db/ops/finish-job.js';
import { getAttachment } from '../db/ops/get-attachment.js';
import { listDeliveredStorageKeys } from '../db/ops/list-delivered-storage-keys.js';
import { loadJob, type LoadedJob } from '../db/ops/load-job.js';
import { beginRun, type BeganRun } from '../db/ops/begin-run.js';
import { getJobStatus } from '../db/ops/get-job-status.js';
import { reopenJob } from '../db/ops/reopen-job.js';
import { readJobResult } from '../db/ops/read-job-result.js';
import { isCancelRequested } from '../db/ops/request-cancel.js';
import { claimJobLease, newLeaseOwner, releaseJobLease, renewJobLease } from '../db/ops/job-lease.js';
import { startAttempt } from '../db/ops/start-attempt.js';
import { suspendJob } from '../db/ops/suspend-job.js';
import { FINAL_JOB_STATUSES } from '../db/schema.js';
import { retryTransient } from '../db/sql-errors.js';
import type { AdaptiveConcurrencyLimiter } from '../engine/adaptive-concurrency-limiter.js';
import { toWebp } from '../adapters/image-codec.js';
import type { ObjectStore } from '../sinks/object-store.js';
import { progressWriter } from '../sinks/progress-writer.js';
import { generatedImageKey, generatedImagePrefix } from '../sinks/storage-keys.js';
import { runEngine, type EngineOptions } from './engine.js';

/** What running a stored job needs: the database, the object store, a generator. */
export interface RunJobDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
  /** Shared by every job of a process, so one API key's limit is respected. */
  readonly limiter?: AdaptiveConcurrencyLimiter | undefined;
  readonly logger?: Logger | undefined;
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
  readonly graceMs?: number;
  /** WebP quality of stored images. Default 80. */
  readonly webpQuality?: number;
  /** Least time between two progress writes of the job row. Default 250 ms. */
  readonly progressIntervalMs?: number;
  /** How often the job row is checked for a cancel request from another process. Default 500 ms. */
  readonly cancelPollMs?: number;
  /** This run's lease owner id. Default a fresh `host:pid:uuid`. */
  readonly leaseOwner?: string;
  /** How long the lease lasts without renewal (it is renewed every third of it). Default 30,000 ms. */
  readonly leaseTtlMs?: number;
  /** Runs that may die in a row without delivering before the job ends `crash_loop`. Default 5. */
  readonly maxCrashResumes?: number;
}

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
 */
export function runStoredJob(deps: RunJobDeps, jobId: string, options: RunJobOptions = {}): Observable<PipelineEvent> {
  return defer(async () => {
    const { database, store, generator } = deps;
    const logger = deps.logger?.child({ jobId });
    // The status decides the path; the full state is loaded once, after `beginRun`.
    const status = await retryTransient(() => getJobStatus(database, jobId));
    if (status === null) throw new JobNotFoundError(jobId);
    if (FINAL_JOB_STATUSES.includes(status)) {
      // A job that ended short only because a dead run's attempts were charged to its
      // budget (before attempts could be abandoned) goes on; any other is replayed.
      const reopened = await retryTransient(() => reopenJob(database, jobId));
      if (!reopened) {
        // An ended job's runs are over: what its last sweep could not remove goes now.
        await sweepOrphans(database, store, jobId, logger, 'warn');
        return replayFinished(database, jobId);
      }
      logger?.warn({ ...reopened }, 'job ended short only because of abandoned attempts: reopened with its budget recomputed');
    }

    // One runner per job: the orphan sweep below must never race another runner's upload.
    const owner = options.leaseOwner ?? newLeaseOwner();
    const leaseTtlMs = options.leaseTtlMs ?? 30_000;
    await retryTransient(() => claimJobLease(database, jobId, owner, leaseTtlMs));
    let began: BeganRun;
    let job: LoadedJob | null;
    try {
      // Orphans of dead runs go first, before `beginRun`: a storage that does not answer
      // (after retries) refuses the run with the job as it was: resumable, no crash counted.
      await sweepOrphans(database, store, jobId, logger, 'refuse');
      began = await retryTransient(() => beginRun(database, jobId));
      job = await retryTransient(() => loadJob(database, jobId));
      if (!job) throw new JobNotFoundError(jobId);
    } catch (error) {
      // A run that could not start gives its lease back at once (the same process may retry).
      await releaseJobLease(database, jobId, owner).catch((e: unknown) => logger?.warn({ err: e }, 'lease release failed'));
      throw error;
    }
    if (began.previousRunDied || began.abandoned > 0) {
      logger?.warn({ abandoned: began.abandoned, crashResumes: began.crashResumes }, 'resuming after a run that died: its unfinished attempts are abandoned (no budget charged)');
    }
    const maxCrashResumes = options.maxCrashResumes ?? 5;
    // A cancel request wins: the job ends `cancelled`, as its user asked.
    if (began.crashResumes >= maxCrashResumes && !job.cancelRequested) return endCrashLoop(database, jobId, job, owner, began.crashResumes, logger);

    // The input image of a stage is read from storage once and shared by every
    // attempt; a failed read is not cached, the next attempt reads again.
    const inputs = job.spec.stages.map((stage) =>
      defer(async (): Promise<InputImage | null> => {
        if (stage.inputAttachId === null) return null;
        const attachment = await getAttachment(database, stage.inputAttachId);
        if (!attachment) throw new PipelineError('invalid_request', `input attachment ${stage.inputAttachId} is gone`);
        const bytes = await firstValueFrom(store.get(attachment.storageKey));
        return { bytes, mimeType: attachment.contentType };
      }).pipe(share({ connector: () => new ReplaySubject<InputImage | null>(1), resetOnError: true, resetOnComplete: false, resetOnRefCountZero: false })),
    );

    const ports: EnginePorts = {
      generate: (request) =>
        from(startAttempt(database, request).catch((e: unknown) => Promise.reject(toPipelineError(e, 'database')))).pipe(
          switchMap(() => inputs[request.stageIndex]!.pipe(take(1))),
          catchTo('storage'),
          switchMap((input) => generator.generate({ ...request, input })),
        ),
      deliver: (request, image) => deliverImage(database, store, request, image, options.webpQuality ?? 80, logger),
    };

    const attemptLog = new AttemptLog(database, logger);
    let leaseReleased = false;
    let stopped = false;
    const leaseLost$ = interval(leaseTtlMs / 3).pipe(
      // A failed renewal (connection lost) is not a lost lease: try again next tick.
      mergeMap(() => from(renewJobLease(database, jobId, owner, leaseTtlMs)).pipe(catchError(() => EMPTY))),
      filter((held) => !held),
      tap(() => logger?.error('lost the job lease to another runner: stopping')),
    );
    const stop$ = merge(options.stop$ ?? EMPTY, leaseLost$).pipe(
      take(1),
      tap(() => {
        stopped = true;
        logger?.info('stop requested: no new attempts, in-flight attempts finish');
      }),
      share(),
    );
    const polledCancel$ = interval(options.cancelPollMs ?? 500).pipe(
      // A failed poll must not end the job: the next poll asks again.
      exhaustMap(() => from(isCancelRequested(database, jobId)).pipe(catchError(() => EMPTY))),
      filter(Boolean),
    );
    // A job cancelled while it waited in the queue ends at once, with no provider call.
    const cancelledBefore$ = job.cancelRequested ? of(true) : EMPTY;
    const cancel$ = merge(cancelledBefore$, options.cancel$ ?? EMPTY, polledCancel$, stop$.pipe(switchMap(() => timer(options.graceMs ?? 30_000)))).pipe(take(1));

    const engineOptions: EngineOptions = {
      ...options,
      globalLimiter: deps.limiter,
      cancel$,
      stop$,
    };
    return runEngine({ jobId, stages: job.spec.stages, state: job.stages }, ports, engineOptions).pipe(
      tap((event) => attemptLog.record(event, stopped)),
      progressWriter(database, {
        intervalMs: options.progressIntervalMs ?? 250,
        onError: (error) => logger?.warn({ err: error }, 'progress write failed'),
      }),
      concatMap((event) => {
        if (event.type !== 'job:finished') return of(event);
        return defer(async () => {
          await attemptLog.flush();
          if (stopped && event.status !== 'completed') {
            if (await retryTransient(() => renewJobLease(database, jobId, owner, leaseTtlMs))) await retryTransient(() => suspendJob(database, jobId));
            await retryTransient(() => releaseJobLease(database, jobId, owner));
            leaseReleased = true;
            logger?.info({ delivered: event.result.deliveredImages }, 'job handed back for resume');
            return EMPTY;
          }
          const credits = await retryTransient(() => finishJob(database, jobId, event.result));
          await sweepOrphans(database, store, jobId, logger, 'warn');
          await retryTransient(() => releaseJobLease(database, jobId, owner));
          leaseReleased = true;
          logger?.info({ status: event.status, delivered: event.result.deliveredImages, total: event.result.totalImages, credits }, 'job finished');
          return of(event);
        }).pipe(mergeMap((o) => o));
      }),
      // On error or unsubscribe only: the normal ends above release it (awaited).
      finalize(() => {
        if (!leaseReleased) void releaseJobLease(database, jobId, owner).catch((error: unknown) => logger?.warn({ err: error }, 'lease release failed'));
      }),
    );
  }).pipe(mergeMap((events$) => events$));
}

/**
 * Ends a job whose runs died `crashResumes` times in a row without delivering: every
 * short stage ends with reason `crash_loop`, the unused reservation is released.
 */
function endCrashLoop(database: Database, jobId: string, job: LoadedJob, owner: string, crashResumes: number, logger: Logger | undefined): Observable<PipelineEvent> {
  return defer(async () => {
    const result = endedResult(
      jobId,
      job.spec.stages.map((stage) => ({ index: stage.index, quantity: stage.quantity, attachIds: (job.stages[stage.index] ?? []).map((slot) => slot.attachId) })),
      { reason: 'crash_loop', errorClass: null },
    );
    const error = `crash_loop: ${crashResumes} runs in a row died without delivering anything`;
    logger?.error({ crashResumes, delivered: result.deliveredImages, total: result.totalImages }, 'crash loop: the job ends instead of running again');
    await retryTransient(() => finishJob(database, jobId, result, { error }));
    await retryTransient(() => releaseJobLease(database, jobId, owner));
    const event: JobFinishedEvent = { type: 'job:finished', jobId, at: Date.now(), status: result.status, attachIds: result.attachIds, result };
    return event;
  });
}

/** `job:finished` of a job that already ended, read back from the database. */
function replayFinished(database: Database, jobId: string): Observable<PipelineEvent> {
  return from(retryTransient(() => readJobResult(database, jobId))).pipe(
    map((stored): JobFinishedEvent => {
      if (!stored) throw new JobNotFoundError(jobId);
      return { type: 'job:finished', jobId, at: Date.now(), status: stored.result.status, attachIds: stored.result.attachIds, result: stored.result };
    }),
  );
}

/** Store the WebP, then commit the delivery; an upload the delivery did not use is removed. */
function deliverImage(
  database: Database,
  store: ObjectStore,
  request: AttemptRequest,
  image: GeneratedImage,
  quality: number,
  logger: Logger | undefined,
): Observable<Delivery> {
  const key = generatedImageKey(request);
  return from(toWebp(image.bytes, { quality })).pipe(
    catchTo('corrupt_image'),
    concatMap((webp) => concat(store.put(key, webp.bytes, webp.contentType).pipe(ignoreElements()), of(webp))),
    concatMap((webp) =>
      from(
        deliverSlot(database, {
          jobId: request.jobId,
          stageIndex: request.stageIndex,
          slotIndex: request.slotIndex,
          attempt: request.attempt,
          storageKey: key,
          contentType: webp.contentType,
          byteSize: webp.byteSize,
          width: webp.width,
          height: webp.height,
        }),
      ).pipe(
        // No delete on a database error: the commit may have happened before the
        // connection died. The resume step compares with the committed rows.
        catchTo('database'),
      ),
    ),
    concatMap((delivery) => {
      if (!delivery.duplicate) return of(delivery);
      logger?.info({ stage: request.stageIndex, slot: request.slotIndex, attachId: delivery.attachId }, 'slot was already filled; upload removed');
      return concat(store.delete(key).pipe(ignoreElements(), catchTo('storage')), of(delivery));
    }),
  );
}

/** Tries of an orphan sweep before it gives up (with 100 ms, 400 ms between them). */
const SWEEP_TRIES = 3;

/**
 * Removes the job's orphan objects, retrying a storage or database error. A sweep that
 * still fails either refuses the run (`refuse`: at the start, so a storage outage leaves
 * the job as it was instead of spending its budget) or is logged and left to the next
 * sweep (`warn`: after the job ended; orphans cost storage, never correctness).
 */
async function sweepOrphans(database: Database, store: ObjectStore, jobId: string, logger: Logger | undefined, onFailure: 'refuse' | 'warn'): Promise<void> {
  for (let tried = 1; ; tried++) {
    try {
      await removeOrphans(database, store, jobId, logger);
      return;
    } catch (error) {
      if (tried >= SWEEP_TRIES) {
        if (onFailure === 'refuse') throw error;
        logger?.warn({ err: error }, 'orphan sweep failed: left for the next run of the job');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 100 * 4 ** (tried - 1)));
    }
  }
}

/** Objects under the job's prefix that no committed attach record points to. */
async function removeOrphans(database: Database, store: ObjectStore, jobId: string, logger: Logger | undefined): Promise<number> {
  const [keys, delivered] = await Promise.all([firstValueFrom(store.list(generatedImagePrefix(jobId))), listDeliveredStorageKeys(database, jobId)]);
  const orphans = keys.filter((key) => !delivered.has(key));
  for (const key of orphans) await firstValueFrom(store.delete(key), { defaultValue: undefined });
  const incomplete = store.removeIncomplete ? await firstValueFrom(store.removeIncomplete(generatedImagePrefix(jobId)), { defaultValue: 0 }) : 0;
  if (orphans.length + incomplete > 0) logger?.info({ orphans: orphans.length, incomplete }, 'removed objects of deliveries that never committed');
  return orphans.length + incomplete;
}

/** Classifies whatever a step throws, keeping a {@link PipelineError}'s own class. */
function catchTo<T>(fallback: Parameters<typeof toPipelineError>[1]) {
  return (source: Observable<T>): Observable<T> =>
    new Observable<T>((subscriber) =>
      source.subscribe({
        next: (v) => subscriber.next(v),
        error: (e: unknown) => subscriber.error(toPipelineError(e, fallback)),
        complete: () => subscriber.complete(),
      }),
    );
}

/**
 * Writes how each attempt ended, in order, off the event path; `flush` waits for
 * the writes so far (before the job is finished, so statistics are complete).
 */
class AttemptLog {
  #tail: Promise<void> = Promise.resolve();
  constructor(
    private readonly database: Database,
    private readonly logger: Logger | undefined,
  ) {}

  /**
   * @param shuttingDown whether the run was stopped (SIGINT/SIGTERM, lost lease): an
   *   attempt it aborts after the grace is `abandoned` like one a dead process left, not a
   *   provider failure (a user's cancel stays a `cancelled` failure: the job ends there).
   */
  record(event: PipelineEvent, shuttingDown: boolean): void {
    if (event.type !== 'attempt:failed' && event.type !== 'slot:delivered') return;
    const failed = event.type === 'attempt:failed';
    const abandoned = failed && shuttingDown && event.errorClass === 'cancelled';
    if (failed) {
      this.logger?.debug({ stage: event.stage, slot: event.slot, attempt: event.attempt, errorClass: event.errorClass, willRetry: event.willRetry, delayMs: event.delayMs }, 'attempt failed');
    }
    const write = () =>
      finishAttempt(this.database, {
        jobId: event.jobId,
        stageIndex: event.stage,
        slotIndex: event.slot,
        attempt: event.attempt,
        outcome: abandoned ? 'abandoned' : failed ? 'failed' : 'delivered',
        errorClass: failed ? event.errorClass : null,
        httpStatus: failed ? event.httpStatus : null,
        message: failed ? event.message : null,
        latencyMs: event.latencyMs,
        usage: failed ? null : event.usage,
      });
    this.#tail = this.#tail.then(write).catch((error: unknown) => this.logger?.warn({ err: error }, 'attempt record failed'));
  }

  flush(): Promise<void> {
    return this.#tail;
  }
}
