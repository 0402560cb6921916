import { randomUUID } from 'node:crypto';
import PgBoss from 'pg-boss';
import { EMPTY, Subject, firstValueFrom, lastValueFrom } from 'rxjs';
import { runStoredJob } from './run-job.js';
/** The pg-boss queue jobs go through. */
export const JOB_QUEUE = 'imagegen-jobs';
function createBoss(pipeline) {
    const url = pipeline.config.databaseUrl;
    if (!url)
        throw new Error('the job queue needs PostgreSQL: set DATABASE_URL');
    const boss = new PgBoss({ connectionString: url, schema: 'imagegen_queue', max: 4 });
    boss.on('error', (error) => pipeline.logger.error({ err: error }, 'job queue error'));
    return boss;
}
async function ensureQueue(boss, expireInSeconds) {
    if (!(await boss.getQueue(JOB_QUEUE))) {
        // retries: a job whose worker died (expired) or threw is taken again; the job's own
        // tables make the re-run a resume, never a second delivery or charge.
        await boss.createQueue(JOB_QUEUE, { name: JOB_QUEUE, policy: 'standard', retryLimit: 1000, retryDelay: 2, expireInSeconds });
    }
}
/** Puts a submitted job on the queue; a job id already queued and not finished is not queued twice. */
export async function submitToQueue(pipeline, jobId, options = {}) {
    const boss = createBoss(pipeline);
    await boss.start();
    try {
        const expireInSeconds = options.expireInSeconds ?? queueExpiry();
        await ensureQueue(boss, expireInSeconds);
        await boss.send(JOB_QUEUE, { jobId }, { singletonKey: jobId, retryLimit: 1000, retryDelay: 2, expireInSeconds });
    }
    finally {
        await boss.stop({ graceful: false, close: true, wait: true });
    }
}
function queueExpiry() {
    // Read once, here and in the worker: how long a dead worker's job waits before another takes it.
    const raw = Number(process.env['IMAGEGEN_QUEUE_EXPIRE_SECONDS'] ?? 600);
    return Number.isInteger(raw) && raw > 0 ? raw : 600;
}
/**
 * Takes jobs from the queue until `stop$`, running up to `jobConcurrency` at once
 * in this process. Any number of workers on any number of machines can share the
 * queue. On stop: no new queue jobs, no new slots; in-flight attempts finish (or
 * are aborted after the grace period); unfinished jobs are handed back (`queued`)
 * and their queue job is failed so another worker retries it.
 */
export async function runWorker(pipeline, options = {}) {
    const boss = createBoss(pipeline);
    const workerId = randomUUID();
    const logger = pipeline.logger.child({ worker: workerId });
    await boss.start();
    const expireInSeconds = options.expireInSeconds ?? queueExpiry();
    await ensureQueue(boss, expireInSeconds);
    const stopping$ = new Subject();
    const stopSubscription = (options.stop$ ?? EMPTY).subscribe(() => stopping$.next());
    const slots = options.jobConcurrency ?? 2;
    logger.info({ jobConcurrency: slots, globalConcurrency: pipeline.limiter.max }, 'worker started');
    const handle = async ([job]) => {
        if (!job)
            return;
        const jobId = job.data.jobId;
        logger.info({ jobId, queueJob: job.id }, 'job taken');
        let finished = false;
        await lastValueFrom(runStoredJob(pipeline, jobId, { ...options.engine, stop$: stopping$ }), { defaultValue: null }).then((last) => {
            finished = last?.type === 'job:finished';
        });
        if (!finished)
            throw new Error(`job ${jobId} was handed back before it ended`);
    };
    const workers = [];
    for (let i = 0; i < slots; i++)
        workers.push(await boss.work(JOB_QUEUE, { batchSize: 1, pollingIntervalSeconds: 0.5 }, handle));
    await firstValueFrom(stopping$, { defaultValue: undefined });
    logger.info('stopping: no new jobs; in-flight attempts finish');
    for (const id of workers)
        await boss.offWork({ id });
    await boss.stop({ graceful: true, close: true, wait: true, timeout: 60_000 });
    stopSubscription.unsubscribe();
    logger.info('worker stopped');
}
