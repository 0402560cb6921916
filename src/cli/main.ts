/**
 * The `imagegen` command line. Exit codes: 0 completed; 1 ended short (partial,
 * failed, cancelled) or could not run (busy, database or storage unavailable);
 * 2 invalid input or configuration (nothing written, no provider call); 3 not
 * enough credits (nothing generated).
 *
 * With `--json`, stdout holds exactly one JSON object on every exit path: the
 * command's answer, or `{"error":{"code","message","problems"}}` (see `failures.ts`).
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { lastValueFrom, of, Subject, takeWhile, tap } from 'rxjs';
import { ConfigError, loadConfig, type ConfigEnv, type ConfigOverrides, type PipelineConfig } from '../config.js';
import { DataDirLockedError, FINAL_JOB_STATUSES, getBalance, getJobStatus, grantCredits, JobLeasedError, JobNotFoundError, jobStats, requestCancel, retryTransient } from '../db/index.js';
import type { JobRowStatus, JobStats } from '../db/index.js';
import { parseCreditAmount } from '../domain/credit-amount.js';
import { engineOptionsOf, openPipeline, type Pipeline } from '../pipeline.js';
import { readJobFile } from '../sources/job-file.js';
import { watchJob, type WatchedEvent } from '../sources/watch-job.js';
import { runStoredJob } from '../streams/run-job.js';
import { refuseOnEmptyDatabase, submitSpec } from '../jobs/submit-job.js';
import { databaseUnavailable, EXIT, isConnectionError, reportError, UnavailableError, UsageError } from './failures.js';
import { formatSummary, jobSummary, type JobSummary } from './summary.js';
import { ProgressView } from './progress-view.js';

export { EXIT } from './failures.js';

const USAGE = `usage:
  imagegen run <job.json> [--json] [--concurrency N] [--provider offline|gemini] [--data-dir DIR]
  imagegen submit <job.json> [--json] [--data-dir DIR]
  imagegen worker [--concurrency N] [--provider offline|gemini] [--data-dir DIR]
  imagegen status <jobId> [--json] [--data-dir DIR]
  imagegen watch <jobId> [--json] [--data-dir DIR]
  imagegen cancel <jobId> [--json] [--data-dir DIR]
  imagegen stats [--json] [--data-dir DIR]
  imagegen credits grant <userId> <amount> [--json] [--data-dir DIR]
  imagegen credits balance <userId> [--json] [--data-dir DIR]

exit codes: 0 completed, 1 ended short or could not run, 2 invalid input, 3 not enough credits`;

const OPTIONS = {
  json: { type: 'boolean' },
  concurrency: { type: 'string' },
  provider: { type: 'string' },
  'data-dir': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

type OptionName = keyof typeof OPTIONS;
type Values = { readonly [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'boolean' ? boolean : string };

/** Per command: its positional arguments (by name, all required) and the options it takes. */
const COMMANDS: Readonly<Record<string, { readonly args: readonly string[]; readonly options: readonly OptionName[] }>> = {
  run: { args: ['<job.json>'], options: ['json', 'concurrency', 'provider', 'data-dir'] },
  submit: { args: ['<job.json>'], options: ['json', 'data-dir'] },
  worker: { args: [], options: ['concurrency', 'provider', 'data-dir'] },
  status: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  watch: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  cancel: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  stats: { args: [], options: ['json', 'data-dir'] },
  'credits grant': { args: ['<userId>', '<amount>'], options: ['json', 'data-dir'] },
  'credits balance': { args: ['<userId>'], options: ['json', 'data-dir'] },
};

/** What one command invocation gets: its checked arguments, the configuration and the output mode. */
interface Invocation {
  readonly args: readonly string[];
  readonly values: Values;
  readonly config: PipelineConfig;
  readonly json: boolean;
}

function exitCodeOf(summary: Pick<JobSummary, 'status'>): number {
  return summary.status === 'completed' ? EXIT.completed : EXIT.short;
}

function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}

/**
 * Whether the embedded database of this configuration has never been created. A
 * command that only reads, or a submit refused on what an empty database holds,
 * answers without creating it (`openPipeline` puts PGlite in `<data dir>/db`).
 */
function embeddedDatabaseMissing(config: PipelineConfig): boolean {
  return !config.databaseUrl && !existsSync(join(config.dataDir, 'db'));
}

/** The variable or flag the data folder came from, for messages. */
function dataDirSource(values: Values): string {
  return values['data-dir'] !== undefined ? '--data-dir' : 'IMAGEGEN_DATA_DIR';
}

/** A data folder that exists as a file can never work: bad configuration (exit 2), found before anything else. */
function checkDataDir(config: PipelineConfig, values: Values): void {
  const usesDataDir = !config.databaseUrl || config.storage.kind === 'folder';
  if (usesDataDir && existsSync(config.dataDir) && !statSync(config.dataDir).isDirectory()) {
    throw new ConfigError(dataDirSource(values), `${config.dataDir} is a file, not a folder`);
  }
}

/**
 * Opens the pipeline for a command, turning the ways opening fails into errors that
 * say what to fix: a data folder that cannot be written, a database that cannot be
 * reached or refuses.
 */
async function withPipeline<T>(inv: Invocation, fn: (pipeline: Pipeline) => Promise<T>): Promise<T> {
  let pipeline: Pipeline;
  try {
    pipeline = await openPipeline(inv.config);
  } catch (error) {
    throw openFailure(error, inv);
  }
  try {
    return await fn(pipeline);
  } finally {
    await pipeline.close();
  }
}

function openFailure(error: unknown, inv: Invocation): unknown {
  if (error instanceof DataDirLockedError) return error;
  const fsError = error as NodeJS.ErrnoException;
  if (typeof fsError?.syscall === 'string' && typeof fsError.path === 'string' && !isConnectionError(error)) {
    return new UnavailableError(
      `data folder ${inv.config.dataDir} cannot be used: ${fsError.syscall} ${fsError.path} failed (${fsError.code ?? 'error'}); ` +
        `set ${dataDirSource(inv.values)} to a folder this process can write`,
      { cause: error },
    );
  }
  // A MigrationError whose cause is a refused connection is an unreachable database, not a schema problem.
  if (inv.config.databaseUrl && isConnectionError(error)) return databaseUnavailable(error, inv.config.databaseUrl);
  return error;
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

async function cmdRun(inv: Invocation): Promise<number> {
  const { config, json } = inv;
  const file = inv.args[0] as string;
  // Everything that can be checked without the database is checked first: a bad file writes nothing.
  const jobFile = await readJobFile(file, { maxQuantity: config.maxQuantity });
  // A fresh data folder holds no attachment, credit or job: refuse what needs one without creating the database.
  if (embeddedDatabaseMissing(config)) refuseOnEmptyDatabase(jobFile.spec, { pricePerImage: config.pricePerImage });
  return withPipeline(inv, async (pipeline) => {
    const { jobId, created } = await submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage });
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

async function cmdStatus(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  return withPipeline(inv, async (pipeline) => {
    const summary = await jobSummary(pipeline.database, jobId);
    print(inv.json, summary, formatSummary(summary));
    return summary.status === 'completed' || summary.status === 'running' || summary.status === 'queued' ? 0 : EXIT.short;
  });
}

/** Why `watch` of an unfinished job stops after the snapshot on the embedded database. */
export const EMBEDDED_WATCH_MESSAGE = 'no process can run this job while you watch it on the embedded database; use PostgreSQL for watch';

async function cmdWatch(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  // PGlite serves one process at a time: while we hold it, nobody can run the job, so no event can ever come.
  const embedded = !inv.config.databaseUrl;
  return withPipeline(inv, async (pipeline) => {
    let status = 'running' as JobRowStatus;
    await lastValueFrom(
      watchJob(pipeline.database, jobId, { logger: pipeline.logger }).pipe(
        tap((event) => {
          if (event.type === 'snapshot' || event.type === 'job:finished') status = event.status as JobRowStatus;
          process.stdout.write(`${inv.json ? JSON.stringify(event) : describeWatched(event)}\n`);
        }),
        takeWhile((event) => !(embedded && event.type === 'snapshot'), true),
      ),
      { defaultValue: null },
    );
    if (!FINAL_JOB_STATUSES.includes(status)) throw new UnavailableError(EMBEDDED_WATCH_MESSAGE);
    return status === 'completed' ? 0 : EXIT.short;
  });
}

function describeWatched(event: WatchedEvent): string {
  if (event.type === 'snapshot') return `${event.jobId}: ${event.status} ${event.delivered}/${event.total}`;
  const { type, jobId: _jobId, ...rest } = event;
  return `${type} ${JSON.stringify(rest)}`;
}

async function cmdCancel(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  return withPipeline(inv, async (pipeline) => {
    const ok = await requestCancel(pipeline.database, jobId);
    if (!ok) {
      const status = await getJobStatus(pipeline.database, jobId);
      if (status === null) throw new JobNotFoundError(jobId);
      print(inv.json, { jobId, outcome: 'already_ended', status }, `job ${jobId} has already ended (${status})`);
      return EXIT.short;
    }
    // Nobody runs it (queued, or its runner died): end it here, with no provider call.
    try {
      await lastValueFrom(runStoredJob(pipeline, jobId, { cancel$: of(true) }), { defaultValue: null });
      print(inv.json, { jobId, outcome: 'cancelled', status: 'cancelled' }, `job ${jobId} cancelled`);
    } catch (error) {
      if (!(error instanceof JobLeasedError)) throw error;
      print(inv.json, { jobId, outcome: 'requested', status: 'running' }, `cancel requested for ${jobId}; the process running it stops within a second`);
    }
    return 0;
  });
}

/** What `stats` says of a database that was never created: nothing was attempted. */
const NO_ATTEMPTS: JobStats = Object.freeze({ attempts: 0, failed: 0, delivered: 0, abandoned: 0, byClass: {}, retries: 0, retriesDelivered: 0, retrySuccessRate: null });

async function cmdStats(inv: Invocation): Promise<number> {
  // A read on a fresh data folder answers without creating the embedded database.
  const read = embeddedDatabaseMissing(inv.config) ? async () => NO_ATTEMPTS : (fn: (p: Pipeline) => Promise<JobStats>) => withPipeline(inv, fn);
  return read(async (pipeline) => jobStats(pipeline.database)).then((stats) => {
    const rate = stats.retrySuccessRate === null ? 'n/a' : `${(stats.retrySuccessRate * 100).toFixed(1)}%`;
    const classes = Object.entries(stats.byClass).map(([c, n]) => `  ${c}: ${n}`);
    print(inv.json, stats, [`attempts: ${stats.attempts} (${stats.delivered} delivered, ${stats.failed} failed, ${stats.abandoned} abandoned)`, `retries: ${stats.retries}, delivered ${stats.retriesDelivered}, success rate ${rate}`, 'failures by class:', ...classes].join('\n'));
    return 0;
  });
}

async function cmdCreditsGrant(inv: Invocation): Promise<number> {
  const [userId, amountText] = inv.args as [string, string];
  const parsed = parseCreditAmount(amountText);
  if ('rule' in parsed) throw new UsageError('<amount>', parsed.rule);
  const { amount } = parsed;
  return withPipeline(inv, async (pipeline) => {
    const { balance } = await grantCredits(pipeline.database, userId, amount);
    print(inv.json, { userId, balance }, `granted ${amount} credits to ${userId}; balance ${balance}`);
    return 0;
  });
}

async function cmdCreditsBalance(inv: Invocation): Promise<number> {
  const userId = inv.args[0] as string;
  // A read on a fresh data folder answers without creating the embedded database.
  const { balance, reserved } = embeddedDatabaseMissing(inv.config) ? { balance: 0, reserved: 0 } : await withPipeline(inv, (pipeline) => getBalance(pipeline.database, userId));
  print(inv.json, { userId, balance, reserved }, `${userId}: balance ${balance}, reserved ${reserved}`);
  return 0;
}

async function cmdSubmit(inv: Invocation): Promise<number> {
  const { config } = inv;
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'submit puts jobs on a PostgreSQL job queue for workers; set DATABASE_URL (or use imagegen run)');
  const jobFile = await readJobFile(inv.args[0] as string, { maxQuantity: config.maxQuantity });
  return withPipeline(inv, async (pipeline) => {
    const { jobId, created } = await submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage });
    // pg-boss is loaded by the two commands that use the queue only.
    const { submitToQueue } = await import('../streams/worker.js');
    await submitToQueue(pipeline, jobId);
    print(inv.json, { jobId, created }, `${created ? 'submitted' : 'already submitted'}: ${jobId}`);
    return 0;
  });
}

async function cmdWorker(inv: Invocation): Promise<number> {
  const { config } = inv;
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'the worker shares a PostgreSQL job queue; set DATABASE_URL');
  return withPipeline(inv, async (pipeline) => {
    const signals = shutdownSignals();
    try {
      const { runWorker } = await import('../streams/worker.js');
      await runWorker(pipeline, { stop$: signals.stop$, engine: engineOptionsOf(config), jobConcurrency: config.workerJobs });
    } finally {
      signals.dispose();
    }
    return 0;
  });
}

const HANDLERS: Readonly<Record<string, (inv: Invocation) => Promise<number>>> = {
  run: cmdRun,
  submit: cmdSubmit,
  worker: cmdWorker,
  status: cmdStatus,
  watch: cmdWatch,
  cancel: cmdCancel,
  stats: cmdStats,
  'credits grant': cmdCreditsGrant,
  'credits balance': cmdCreditsBalance,
};

/**
 * The command named by the positionals and its arguments, checked: a known command,
 * exactly its arguments (none empty), only options it takes, no empty option value.
 */
function resolveCommand(positionals: readonly string[], values: Values): { name: string; args: string[] } {
  const [first, ...rest] = positionals;
  if (first === undefined) throw new UsageError('<command>', 'is required');
  let name = first;
  let args = rest;
  if (first === 'credits') {
    const action = rest[0];
    if (action !== 'grant' && action !== 'balance') throw new UsageError('credits', `needs grant or balance, got ${JSON.stringify(action ?? null)}`);
    name = `credits ${action}`;
    args = rest.slice(1);
  }
  const command = COMMANDS[name];
  if (!command) throw new UsageError('<command>', `unknown command ${JSON.stringify(first)}`);
  command.args.forEach((arg, i) => {
    const value = args[i];
    if (value === undefined) throw new UsageError(arg, `is required: imagegen ${name} ${command.args.join(' ')}`);
    if (value.trim() === '') throw new UsageError(arg, 'must not be empty');
  });
  if (args.length > command.args.length) {
    throw new UsageError('(arguments)', `unexpected argument ${JSON.stringify(args[command.args.length])}: imagegen ${name} takes ${command.args.length === 0 ? 'no arguments' : command.args.join(' ')}`);
  }
  for (const [option, value] of Object.entries(values) as [OptionName, string | boolean | undefined][]) {
    if (value === undefined || option === 'help') continue;
    if (!command.options.includes(option)) throw new UsageError(`--${option}`, `is not an option of imagegen ${name}`);
    if (typeof value === 'string' && value.trim() === '') throw new UsageError(`--${option}`, 'must not be empty');
  }
  return { name, args };
}

/**
 * Runs the CLI with `argv` (without node and the script) and returns the exit code.
 * `env` is the environment `loadConfig` reads (default `process.env`; `npm run demo` gives its presets).
 */
export async function main(argv: readonly string[], env?: ConfigEnv): Promise<number> {
  // Known before parsing, so even an unparsable command line answers in JSON when asked to.
  let json = argv.includes('--json');
  let debug = false;
  let storage: 'folder' | 's3' | undefined;
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
    } catch (error) {
      throw new UsageError('(arguments)', (error as Error).message);
    }
    const values = parsed.values as Values;
    json = Boolean(values.json);
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    const { name, args } = resolveCommand(parsed.positionals, values);
    const overrides: ConfigOverrides = { dataDir: values['data-dir'], provider: values.provider, concurrency: values.concurrency };
    const config = loadConfig(env, overrides);
    debug = config.logLevel === 'debug' || config.logLevel === 'trace';
    storage = config.storage.kind;
    checkDataDir(config, values);
    return await (HANDLERS[name] as (inv: Invocation) => Promise<number>)({ args, values, config, json });
  } catch (error) {
    return reportError(error, { json, debug, storage });
  }
}

