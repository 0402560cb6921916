import { randomUUID } from 'node:crypto';
import PgBoss from 'pg-boss';
import { EMPTY, Subject, firstValueFrom, lastValueFrom, type Observable } from 'rxjs';
import type { Pipeline } from '../pipeline.js';
import { runStoredJob, type RunJobOptions } from './run-job.js';

/** The pg-boss queue jobs go through. */
export const JOB_QUEUE = 'imagegen-jobs';

/** Jobs one worker runs at once, by default (`IMAGEGEN_WORKER_JOBS`). */
export const DEFAULT_WORKER_JOBS = 2;

export interface WorkerOptions {
  /** Shutdown: stop taking queue jobs and new slots, finish in-flight attempts, hand unfinished jobs back. */
  readonly stop$?: Observable<unknown>;
  /** Jobs this process runs at once (they share one global attempt limit). Default 2. */
  readonly jobConcurrency?: number;
  readonly engine?: RunJobOptions;
  /** Seconds after which pg-boss hands an unfinished queue job (its worker died) to another worker. Default 600. */
  readonly expireInSeconds?: number;
}

function createBoss(pipeline: Pipeline): PgBoss {
  const url = pipeline.config.databaseUrl;
  if (!url) throw new Error('the job queue needs PostgreSQL: set DATABASE_URL');
  // Maintenance is what expires a dead worker's active queue job; pg-boss runs it every
  // 120 s by default, which would make IMAGEGEN_QUEUE_EXPIRE_SECONDS meaningless below that.
  const maintenanceIntervalSeconds = Math.max(1, Math.min(30, pipeline.config.queueExpireSeconds));
  const boss = new PgBoss({ connectionString: url, schema: 'imagegen_queue', max: 4, maintenanceIntervalSeconds, monitorStateIntervalSeconds: maintenanceIntervalSeconds });
  boss.on('error', (error: unknown) => pipeline.logger.error({ err: error }, 'job queue error'));
  return boss;
}

async function ensureQueue(boss: PgBoss, expireInSeconds: number): Promise<void> {
  if (!(await boss.getQueue(JOB_QUEUE))) {
    // retries: a job whose worker died (expired) or threw is taken again; the job's own
    // tables make the re-run a resume, never a second delivery or charge.
    await boss.createQueue(JOB_QUEUE, { name: JOB_QUEUE, policy: 'standard', retryLimit: 1000, retryDelay: 2, expireInSeconds });
  }
}

/** Puts a submitted job on the queue; a job id already queued and not finished is not queued twice. */
export async function submitToQueue(pipeline: Pipeline, jobId: string, options: { expireInSeconds?: number } = {}): Promise<void> {
  const boss = createBoss(pipeline);
  await boss.start();
  try {
    const expireInSeconds = options.expireInSeconds ?? pipeline.config.queueExpireSeconds;
    await ensureQueue(boss, expireInSeconds);
    await boss.send(JOB_QUEUE, { jobId }, { singletonKey: jobId, retryLimit: 1000, retryDelay: 2, expireInSeconds });
  } finally {
    await boss.stop({ graceful: false, close: true, wait: true });
  }
}

/**
 * Takes jobs from the queue until `stop$`, running up to `jobConcurrency` at once
 * in this process. Any number of workers on any number of machines can share the
 * queue. On stop: no new queue jobs, no new slots; in-flight attempts finish (or
 * are aborted after the grace period); unfinished jobs are handed back (`queued`)
 * and their queue job is failed so another worker retries it.
 */
export async function runWorker(pipeline: Pipeline, options: WorkerOptions = {}): Promise<void> {
  const boss = createBoss(pipeline);
  const workerId = randomUUID();
  const logger = pipeline.logger.child({ worker: workerId });
  await boss.start();
  const expireInSeconds = options.expireInSeconds ?? pipeline.config.queueExpireSeconds;
  await ensureQueue(boss, expireInSeconds);
  const stopping$ = new Subject<void>();
  const stopSubscription = (options.stop$ ?? EMPTY).subscribe(() => stopping$.next());
  const slots = options.jobConcurrency ?? DEFAULT_WORKER_JOBS;
  logger.info({ jobConcurrency: slots, globalConcurrency: pipeline.limiter.max }, 'worker started');
  const handle = async ([job]: PgBoss.Job<{ jobId: string }>[]) => {
    if (!job) return;
    const jobId = job.data.jobId;
    logger.info({ jobId, queueJob: job.id }, 'job taken');
    let finished = false;
    await lastValueFrom(
      runStoredJob(pipeline, jobId, { ...options.engine, stop$: stopping$ }),
      { defaultValue: null },
    ).then((last) => {
      finished = last?.type === 'job:finished';
    });
    if (!finished) throw new Error(`job ${jobId} was handed back before it ended`);
  };
  const workers: string[] = [];
  for (let i = 0; i < slots; i++) workers.push(await boss.work(JOB_QUEUE, { batchSize: 1, pollingIntervalSeconds: 0.5 }, handle));
  await firstValueFrom(stopping$, { defaultValue: undefined });
  logger.info('stopping: no new jobs; in-flight attempts finish');
  for (const id of workers) await boss.offWork({ id });
  await boss.stop({ graceful: true, close: true, wait: true, timeout: 60_000 });
  stopSubscription.unsubscribe();
  logger.info('worker stopped');
}
