/**
 * The `imagegen` command line. Exit codes: 0 completed; 1 ended short (partial,
 * failed, cancelled) or could not run; 2 invalid input (nothing written, no provider
 * call); 3 not enough credits (nothing generated).
 */
import { parseArgs } from 'node:util';
import { lastValueFrom, of, Subject, tap } from 'rxjs';
import { ConfigError, loadConfig, type ConfigOverrides } from '../config.js';
import { InputAttachmentError, InsufficientCreditsError, JobNotFoundError, JobOwnershipError, MigrationError } from '../db/errors.js';
import { DataDirLockedError } from '../db/data-dir-lock.js';
import { JobLeasedError } from '../db/ops/job-lease.js';
import { getBalance } from '../db/ops/get-balance.js';
import { retryTransient } from '../db/sql-errors.js';
import { grantCredits } from '../db/ops/grant-credits.js';
import { jobStats } from '../db/ops/job-stats.js';
import { requestCancel } from '../db/ops/request-cancel.js';
import { loadJob } from '../db/ops/load-job.js';
import { JobSpecError } from '../domain/job-spec.js';
import { engineOptionsOf, openPipeline, type Pipeline } from '../pipeline.js';
import { readJobFile } from '../sources/job-file.js';
import { watchJob, type WatchedEvent } from '../sources/watch-job.js';
import { runStoredJob } from '../streams/run-job.js';
import { submitSpec } from '../streams/submit-job.js';
import { formatSummary, jobSummary, type JobSummary } from './summary.js';
import { ProgressView } from './progress-view.js';
import { runWorker, submitToQueue } from '../streams/worker.js';

export const EXIT = Object.freeze({ completed: 0, short: 1, invalid: 2, credits: 3 });

/** An error the user caused, with the exit code it maps to. */
class UsageError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.invalid,
  ) {
    super(message);
  }
}

const USAGE = `usage:
  imagegen run <job.json> [--json] [--concurrency N] [--provider offline|gemini] [--data-dir DIR]
  imagegen submit <job.json> [--data-dir DIR]
  imagegen worker [--concurrency N] [--provider offline|gemini]
  imagegen status <jobId> [--json]
  imagegen watch <jobId> [--json]
  imagegen cancel <jobId>
  imagegen stats [--json]
  imagegen credits grant <userId> <amount>
  imagegen credits balance <userId> [--json]

exit codes: 0 completed, 1 ended short, 2 invalid input, 3 not enough credits`;

const OPTIONS = {
  json: { type: 'boolean' },
  concurrency: { type: 'string' },
  provider: { type: 'string' },
  'data-dir': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

function exitCodeOf(summary: Pick<JobSummary, 'status'>): number {
  return summary.status === 'completed' ? EXIT.completed : EXIT.short;
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}

async function withPipeline<T>(overrides: ConfigOverrides, fn: (pipeline: Pipeline) => Promise<T>): Promise<T> {
  const config = loadConfig(process.env, overrides);
  const pipeline = await openPipeline(config);
  try {
    return await fn(pipeline);
  } finally {
    await pipeline.close();
  }
}

/** SIGINT/SIGTERM: stop taking new slots; a second signal aborts in-flight attempts. */
function shutdownSignals(): { stop$: Subject<void>; dispose: () => void } {
  const stop$ = new Subject<void>();
  let count = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    count++;
    process.stderr.write(`\n${signal}: ${count === 1 ? 'finishing in-flight attempts; the job can be resumed' : 'aborting'}\n`);
    if (count === 1) stop$.next();
    else process.exit(EXIT.short);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    stop$,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

async function cmdRun(file: string | undefined, values: Record<string, string | boolean | undefined>): Promise<number> {
  if (!file) throw new UsageError('run needs a job file: imagegen run <job.json>');
  const overrides = { dataDir: values['data-dir'] as string | undefined, provider: values['provider'] as string | undefined, concurrency: values['concurrency'] as string | undefined };
  const config = loadConfig(process.env, overrides);
  // Everything that can be checked without the database is checked first: a bad file writes nothing.
  const jobFile = await readJobFile(file, { maxQuantity: config.maxQuantity });
  return withPipeline(overrides, async (pipeline) => {
    const json = Boolean(values['json']);
    const { jobId, created } = await (async () => {
      if (jobFile.spec.jobId !== null) {
        const specJobId = jobFile.spec.jobId;
        const existing = await retryTransient(() => loadJob(pipeline.database, specJobId));
        if (existing) {
          if (existing.userId !== jobFile.spec.userId) throw new JobOwnershipError(jobFile.spec.jobId, jobFile.spec.userId);
          return { jobId: existing.jobId, created: false };
        }
      }
      return submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage });
    })();
    pipeline.logger.info({ jobId, created, provider: config.provider }, created ? 'job submitted' : 'job exists: resuming or reporting');
    const view = new ProgressView(process.stderr);
    const signals = shutdownSignals();
    try {
      await lastValueFrom(
        runStoredJob(pipeline, jobId, { ...engineOptionsOf(config), stop$: signals.stop$ }).pipe(tap((event) => view.handle(event))),
        { defaultValue: null },
      );
    } finally {
      signals.dispose();
    }
    const summary = await retryTransient(() => jobSummary(pipeline.database, jobId));
    print(json, summary, formatSummary(summary));
    return exitCodeOf(summary);
  });
}

async function cmdStatus(jobId: string | undefined, json: boolean): Promise<number> {
  if (!jobId) throw new UsageError('status needs a job id');
  return withPipeline({}, async (pipeline) => {
    const summary = await jobSummary(pipeline.database, jobId);
    print(json, summary, formatSummary(summary));
    return summary.status === 'completed' || summary.status === 'running' || summary.status === 'queued' ? 0 : EXIT.short;
  });
}

async function cmdWatch(jobId: string | undefined, json: boolean): Promise<number> {
  if (!jobId) throw new UsageError('watch needs a job id');
  return withPipeline({}, async (pipeline) => {
    let status = 'running';
    await lastValueFrom(
      watchJob(pipeline.database, jobId).pipe(
        tap((event) => {
          if (event.type === 'snapshot') status = event.status;
          if (event.type === 'job:finished') status = event.status;
          if (json) process.stdout.write(`${JSON.stringify(event)}\n`);
          else process.stdout.write(`${describeWatched(event)}\n`);
        }),
      ),
      { defaultValue: null },
    );
    return status === 'completed' ? 0 : EXIT.short;
  });
}

function describeWatched(event: WatchedEvent): string {
  if (event.type === 'snapshot') return `${event.jobId}: ${event.status} ${event.delivered}/${event.total}`;
  const { type, jobId: _jobId, ...rest } = event;
  return `${type} ${JSON.stringify(rest)}`;
}

async function cmdCancel(jobId: string | undefined): Promise<number> {
  if (!jobId) throw new UsageError('cancel needs a job id');
  return withPipeline({}, async (pipeline) => {
    const ok = await requestCancel(pipeline.database, jobId);
    if (!ok) {
      const job = await loadJob(pipeline.database, jobId);
      if (!job) throw new JobNotFoundError(jobId);
      process.stdout.write(`job ${jobId} has already ended (${job.status})\n`);
      return EXIT.short;
    }
    // Nobody runs it (queued, or its runner died): end it here, with no provider call.
    try {
      await lastValueFrom(runStoredJob(pipeline, jobId, { cancel$: of(true) }), { defaultValue: null });
      process.stdout.write(`job ${jobId} cancelled\n`);
    } catch (error) {
      if (!(error instanceof JobLeasedError)) throw error;
      process.stdout.write(`cancel requested for ${jobId}; the process running it stops within a second\n`);
    }
    return 0;
  });
}

async function cmdStats(json: boolean): Promise<number> {
  return withPipeline({}, async (pipeline) => {
    const stats = await jobStats(pipeline.database);
    const rate = stats.retrySuccessRate === null ? 'n/a' : `${(stats.retrySuccessRate * 100).toFixed(1)}%`;
    const classes = Object.entries(stats.byClass).map(([c, n]) => `  ${c}: ${n}`);
    print(json, stats, [`attempts: ${stats.attempts} (${stats.delivered} delivered, ${stats.failed} failed)`, `retries: ${stats.retries}, delivered ${stats.retriesDelivered}, success rate ${rate}`, 'failures by class:', ...classes].join('\n'));
    return 0;
  });
}

async function cmdCredits(args: readonly string[], json: boolean): Promise<number> {
  const [action, userId, amountText] = args;
  if (action === 'grant') {
    if (!userId) throw new UsageError('credits grant needs <userId> <amount>');
    const amount = Number(amountText);
    if (!amountText || !Number.isSafeInteger(amount) || amount <= 0) throw new UsageError(`amount: must be a positive integer, got ${JSON.stringify(amountText ?? null)}`);
    return withPipeline({}, async (pipeline) => {
      const { balance } = await grantCredits(pipeline.database, userId, amount);
      print(json, { userId, balance }, `granted ${amount} credits to ${userId}; balance ${balance}`);
      return 0;
    });
  }
  if (action === 'balance') {
    if (!userId) throw new UsageError('credits balance needs <userId>');
    return withPipeline({}, async (pipeline) => {
      const { balance, reserved } = await getBalance(pipeline.database, userId);
      print(json, { userId, balance, reserved }, `${userId}: balance ${balance}, reserved ${reserved}`);
      return 0;
    });
  }
  throw new UsageError('credits needs grant or balance');
}

async function cmdSubmit(file: string | undefined, values: Record<string, string | boolean | undefined>): Promise<number> {
  if (!file) throw new UsageError('submit needs a job file: imagegen submit <job.json>');
  const overrides = { dataDir: values['data-dir'] as string | undefined };
  const config = loadConfig(process.env, overrides);
  if (!config.databaseUrl) throw new UsageError('DATABASE_URL: submit puts jobs on a PostgreSQL job queue for workers; set DATABASE_URL (or use imagegen run)');
  const jobFile = await readJobFile(file, { maxQuantity: config.maxQuantity });
  return withPipeline(overrides, async (pipeline) => {
    const { jobId, created } = await submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage });
    await submitToQueue(pipeline, jobId);
    print(Boolean(values['json']), { jobId, created }, `${created ? 'submitted' : 'already submitted'}: ${jobId}`);
    return 0;
  });
}

async function cmdWorker(values: Record<string, string | boolean | undefined>): Promise<number> {
  const overrides = { provider: values['provider'] as string | undefined, concurrency: values['concurrency'] as string | undefined };
  const config = loadConfig(process.env, overrides);
  if (!config.databaseUrl) throw new UsageError('DATABASE_URL: the worker shares a PostgreSQL job queue; set DATABASE_URL');
  return withPipeline(overrides, async (pipeline) => {
    const signals = shutdownSignals();
    try {
      await runWorker(pipeline, { stop$: signals.stop$, engine: engineOptionsOf(config), jobConcurrency: config.workerJobs });
    } finally {
      signals.dispose();
    }
    return 0;
  });
}

/** Runs the CLI with `argv` (without node and the script) and returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    process.stderr.write(`imagegen: ${(error as Error).message}\n${USAGE}\n`);
    return EXIT.invalid;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  const json = Boolean(values.json);
  try {
    switch (command) {
      case 'run':
        return await cmdRun(rest[0], values);
      case 'submit':
        return await cmdSubmit(rest[0], values);
      case 'worker':
        return await cmdWorker(values);
      case 'status':
        return await cmdStatus(rest[0], json);
      case 'watch':
        return await cmdWatch(rest[0], json);
      case 'cancel':
        return await cmdCancel(rest[0]);
      case 'stats':
        return await cmdStats(json);
      case 'credits':
        return await cmdCredits(rest, json);
      default:
        if (values.help) {
          process.stdout.write(`${USAGE}\n`);
          return 0;
        }
        process.stderr.write(`imagegen: ${command ? `unknown command ${command}` : 'no command'}\n${USAGE}\n`);
        return EXIT.invalid;
    }
  } catch (error) {
    return reportError(error);
  }
}

function reportError(error: unknown): number {
  if (error instanceof JobSpecError) {
    process.stderr.write(`imagegen: ${error.message}\n`);
    return EXIT.invalid;
  }
  if (error instanceof InsufficientCreditsError) {
    process.stderr.write(`imagegen: not enough credits: ${error.message}\n`);
    return EXIT.credits;
  }
  if (error instanceof InputAttachmentError || error instanceof JobOwnershipError || error instanceof ConfigError || error instanceof UsageError) {
    process.stderr.write(`imagegen: ${error.message}\n`);
    return error instanceof UsageError ? error.exitCode : EXIT.invalid;
  }
  if (error instanceof JobNotFoundError) {
    process.stderr.write(`imagegen: ${error.message}\n`);
    return EXIT.invalid;
  }
  if (error instanceof MigrationError || error instanceof DataDirLockedError || error instanceof JobLeasedError) {
    process.stderr.write(`imagegen: ${error.message}\n`);
    return EXIT.short;
  }
  process.stderr.write(`imagegen: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  return EXIT.short;
}

