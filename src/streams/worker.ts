import { hostname } from 'node:os';
import PgBoss from 'pg-boss';
import { EMPTY, ReplaySubject, Subject, catchError, exhaustMap, firstValueFrom, from, interval, merge, startWith, type Observable, type Subscription } from 'rxjs';
import type { PipelineEvent } from '../domain/events.js';
import { JobLeasedError, JobNotFoundError, claimJobLease, claimUnattendedJob, newLeaseOwner, retryTransient } from '../db/index.js';
import { providerKeyOf, type Pipeline } from '../pipeline.js';
import type { PipelineMetrics } from '../sinks/metrics.js';
import { FleetLimiter } from './fleet-limiter.js';
import { DEFAULT_RUN_OPTIONS, runStoredJob, type RunJobOptions } from './run-job.js';

/** The pg-boss queue jobs go through. */
export const JOB_QUEUE = 'imagegen-jobs';

/** Jobs one worker runs at once, by default (`IMAGEGEN_WORKER_JOBS`). */
export const DEFAULT_WORKER_JOBS = 2;

/** How often an idle worker looks for work (the queue, then jobs nobody runs), by default, in ms. */
export const DEFAULT_WORKER_POLL_MS = 500;

export interface WorkerOptions {
  /** Shutdown: stop taking queue jobs and new slots, finish in-flight attempts, hand unfinished jobs back. */
  readonly stop$?: Observable<unknown>;
  /** Jobs this process runs at once (they share one attempt limiter). Default {@link DEFAULT_WORKER_JOBS}. */
  readonly jobConcurrency?: number;
  /** The runs' options; `leaseTtlMs` there is the worker's lease and heartbeat TTL (default 15 s). */
  readonly engine?: RunJobOptions;
  /** How long a queue message taken but not yet claimed stays with this worker (pg-boss expiry). Default the config's (600 s). */
  readonly expireInSeconds?: number;
  /** How often to look for work when idle. Default {@link DEFAULT_WORKER_POLL_MS}. */
  readonly pollMs?: number;
  /** Fed the runs' events; reports this worker's provider limit and its queue's size. Default none. */
  readonly metrics?: Pick<PipelineMetrics, 'observeRun' | 'attachLimiter' | 'attachQueue'> | undefined;
}

function createBoss(pipeline: Pipeline): PgBoss {
  const url = pipeline.config.databaseUrl;
  if (!url) throw new Error('the job queue needs PostgreSQL: set DATABASE_URL');
  // Maintenance expires queue messages a dead worker took but never claimed; the lease, not
  // this expiry, decides whether a running job is alive.
  const maintenanceIntervalSeconds = Math.max(1, Math.min(30, pipeline.config.queueExpireSeconds));
  const boss = new PgBoss({ connectionString: url, schema: 'imagegen_queue', max: 4, maintenanceIntervalSeconds, monitorStateIntervalSeconds: maintenanceIntervalSeconds });
  boss.on('error', (error: unknown) => pipeline.logger.error({ err: error }, 'job queue error'));
  return boss;
}

async function ensureQueue(boss: PgBoss, expireInSeconds: number): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    if (await boss.getQueue(JOB_QUEUE)) return;
    try {
      await boss.createQueue(JOB_QUEUE, { name: JOB_QUEUE, policy: 'standard', retryLimit: 1000, retryDelay: 2, expireInSeconds });
      return;
    } catch (error) {
      // Two processes creating the queue at once on a fresh database (a service and a worker
      // starting together): pg-boss's create is not safe under that race (seen: "deadlock
      // detected"). The other one won; look again.
      if (attempt >= 5) throw error;
    }
  }
}

async function sendJob(boss: PgBoss, jobId: string, expireInSeconds: number, priority: number): Promise<void> {
  await boss.send(JOB_QUEUE, { jobId }, { singletonKey: jobId, retryLimit: 1000, retryDelay: 2, expireInSeconds, priority });
}

/**
 * Puts a submitted job on the queue; a job id already queued and not taken is not queued
 * twice. `priority`: higher is taken first (the job spec's `priority`).
 */
export async function submitToQueue(pipeline: Pipeline, jobId: string, options: { expireInSeconds?: number; priority?: number } = {}): Promise<void> {
  const boss = createBoss(pipeline);
  await boss.start();
  try {
    const expireInSeconds = options.expireInSeconds ?? pipeline.config.queueExpireSeconds;
    await ensureQueue(boss, expireInSeconds);
    await sendJob(boss, jobId, expireInSeconds, options.priority ?? 0);
  } finally {
    await boss.stop({ graceful: false, close: true, wait: true });
  }
}

/** A sender to the job queue that stays open: one pg-boss for every job a service submits. */
export interface JobQueue {
  /** Queues a submitted job ({@link submitToQueue}'s rules: not twice while queued and not taken). */
  submit(jobId: string, options?: { readonly priority?: number }): Promise<void>;
  close(): Promise<void>;
}

/**
 * Opens the queue for a process that submits many jobs (`imagegen serve` on PostgreSQL):
 * {@link submitToQueue} starts and stops a pg-boss per job, this keeps one (4 connections).
 */
export async function openJobQueue(pipeline: Pipeline, options: { expireInSeconds?: number } = {}): Promise<JobQueue> {
  const boss = createBoss(pipeline);
  await boss.start();
  const expireInSeconds = options.expireInSeconds ?? pipeline.config.queueExpireSeconds;
  try {
    await ensureQueue(boss, expireInSeconds);
  } catch (error) {
    await boss.stop({ graceful: false, close: true, wait: true });
    throw error;
  }
  return {
    submit: (jobId, submitOptions = {}) => sendJob(boss, jobId, expireInSeconds, submitOptions.priority ?? 0),
    close: () => boss.stop({ graceful: false, close: true, wait: true }),
  };
}

/**
 * Runs jobs of the fleet until `stop$`, up to `jobConcurrency` at once in this process.
 * Any number of workers on any number of machines share the queue and one provider limit.
 *
 * **Liveness is the lease, not the queue.** A worker takes a queue message, claims the job's
 * lease (renewed every third of `leaseTtlMs` while it runs) and completes the message at
 * once: from then on only the lease says who runs the job, however long it runs. A lease
 * not renewed for its TTL belongs to a dead worker (any host): every worker sweeps for such
 * jobs (`claimUnattendedJob`, `for update skip locked`) each time it looks for work and takes
 * them over, resuming them exactly. The same sweep finds jobs nobody has held for a TTL
 * (a lost queue message, a worker that died between message and lease), so no job is ever
 * left with nobody running it and no queue entry.
 *
 * ```
 * look for work ─► unattended job? ── yes ─► run it (takeover)
 *                      │ no
 *                      ▼
 *                 queue message ─► claim lease ─► complete message ─► run it
 *                                      │ held by a live worker: complete message (it runs there)
 * ```
 *
 * On stop: no new jobs, no new slots; in-flight attempts finish (or are aborted after the
 * grace period); unfinished jobs are handed back (`queued`, lease released) and queued again.
 */
export async function runWorker(pipeline: Pipeline, options: WorkerOptions = {}): Promise<void> {
  const config = pipeline.config;
  const name = config.fleet.workerName ?? hostname();
  const workerId = newLeaseOwner(name);
  const logger = pipeline.logger.child({ worker: workerId });
  const leaseTtlMs = options.engine?.leaseTtlMs ?? DEFAULT_RUN_OPTIONS.leaseTtlMs;
  const expireInSeconds = options.expireInSeconds ?? config.queueExpireSeconds;
  const slots = options.jobConcurrency ?? DEFAULT_WORKER_JOBS;
  const boss = createBoss(pipeline);
  await boss.start();
  await ensureQueue(boss, expireInSeconds);
  const limiter = new FleetLimiter({
    database: pipeline.database,
    workerId,
    name,
    providerKey: providerKeyOf(config),
    concurrency: config.engine.globalConcurrency,
    providerMaxInFlight: config.fleet.providerMaxInFlight,
    providerMaxPerMinute: config.fleet.providerMaxPerMinute,
    maxInFlightPerUser: config.fleet.maxInFlightPerUser,
    ttlMs: leaseTtlMs,
    logger,
  });
  await limiter.start();
  // `process` scope: each worker keeps its own adaptive limit (the fleet row still carries its heartbeat).
  const attemptLimiter = config.fleet.providerLimitScope === 'process' ? pipeline.limiter : limiter;
  const metrics = options.metrics;
  metrics?.attachLimiter(attemptLimiter);
  metrics?.attachQueue(() => boss.getQueueSize(JOB_QUEUE));
  const deps = { database: pipeline.database, store: pipeline.store, generator: pipeline.generator, batches: pipeline.batches, limiter: attemptLimiter, logger, metrics, pricing: pipeline.pricing, codec: pipeline.codec };
  const running = new Map<string, Subscription>();
  const ended = new Subject<void>();
  // Replayed: a run started just as the stop came still sees it.
  const stopping$ = new ReplaySubject<void>(1);
  let stopping = false;

  /** The next job this worker holds the lease of, or null when there is no work. */
  const nextJob = async (): Promise<string | null> => {
    for (;;) {
      const unattended = await claimUnattendedJob(pipeline.database, workerId, leaseTtlMs, leaseTtlMs);
      // Our own run, late to renew: it goes on (the claim renewed its lease); never a second run here.
      if (unattended && running.has(unattended.jobId)) continue;
      if (unattended) {
        // Nobody was running it: its worker died (lease lapsed) or its queue message was lost.
        logger.warn({ jobId: unattended.jobId, via: 'takeover', previousOwner: unattended.previousOwner }, 'job taken');
        return unattended.jobId;
      }
      const [message] = await boss.fetch<{ jobId: string }>(JOB_QUEUE, { batchSize: 1 });
      if (!message) return null;
      const jobId = message.data.jobId;
      if (running.has(jobId)) {
        // The sweep took it before its message came (it waited longer than a TTL): this worker runs it already.
        await boss.complete(JOB_QUEUE, message.id);
        continue;
      }
      try {
        await retryTransient(() => claimJobLease(pipeline.database, jobId, workerId, leaseTtlMs));
      } catch (error) {
        if (!(error instanceof JobLeasedError) && !(error instanceof JobNotFoundError)) throw error;
        // Another live worker runs it (or it is gone): the message is done; the lease watches the run.
        logger.info({ jobId, reason: error.message }, 'queue message for a job this worker cannot run: completed');
        await boss.complete(JOB_QUEUE, message.id);
        continue;
      }
      await boss.complete(JOB_QUEUE, message.id);
      logger.info({ jobId, via: 'queue', queueJob: message.id }, 'job taken');
      return jobId;
    }
  };

  const start = (jobId: string): void => {
    let last: PipelineEvent | undefined;
    const settle = (error?: unknown): void => {
      running.delete(jobId);
      if (error !== undefined) logger.error({ err: error, jobId }, 'run failed; the job stays resumable (another worker takes it after the lease TTL)');
      else if (last?.type !== 'job:finished') {
        // Handed back (shutdown or a lost lease): queue it again so a live worker takes it now.
        void sendJob(boss, jobId, expireInSeconds, 0).catch((e: unknown) => logger.warn({ err: e, jobId }, 'could not queue the handed-back job; the sweep finds it after the lease TTL'));
      }
      ended.next();
    };
    running.set(
      jobId,
      runStoredJob(deps, jobId, { ...options.engine, leaseOwner: workerId, leaseTtlMs, stop$: stopping$ }).subscribe({
        next: (event) => (last = event),
        error: (error: unknown) => settle(error),
        complete: () => settle(),
      }),
    );
  };

  const fill = async (): Promise<void> => {
    while (!stopping && running.size < slots) {
      const jobId = await nextJob();
      if (jobId === null || stopping) {
        if (jobId !== null) start(jobId); // claimed just as the stop came: the run hands it back at once
        return;
      }
      start(jobId);
    }
  };

  logger.info({ jobConcurrency: slots, globalConcurrency: limiter.max, leaseTtlMs, name }, 'worker started');
  // One search at a time (exhaustMap): a tick during a search is dropped, never doubled.
  let filling: Promise<void> = Promise.resolve();
  const looking = merge(interval(options.pollMs ?? DEFAULT_WORKER_POLL_MS), ended)
    .pipe(
      startWith(0),
      exhaustMap(() => from((filling = fill())).pipe(catchError((error: unknown) => (logger.warn({ err: error }, 'looking for work failed; trying again'), EMPTY)))),
    )
    .subscribe();

  await firstValueFrom(options.stop$ ?? new Subject<never>(), { defaultValue: undefined });
  stopping = true;
  logger.info({ jobs: [...running.keys()] }, 'stopping: no new jobs; in-flight attempts finish');
  looking.unsubscribe();
  stopping$.next();
  // A search still in flight may claim one more job: it starts it, and the run hands it back at once.
  await filling.catch(() => undefined);
  while (running.size > 0) await firstValueFrom(ended);
  await limiter.stop();
  await boss.stop({ graceful: true, close: true, wait: true, timeout: 60_000 });
  logger.info('worker stopped');
}
