/** The command line's arguments and what every command shares: options, usage, opening the pipeline, printing, signals. */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { of, Subject } from 'rxjs';
import type { Logger } from 'pino';
import { ConfigError, type PipelineConfig } from '../config.js';
import { DataDirLockedError, isConnectionError } from '../db/index.js';
import { openPipeline, type Pipeline } from '../pipeline.js';
import { databaseUnavailable, EXIT, UnavailableError, UsageError } from './failures.js';
import { type JobSummary } from './summary.js';

export const USAGE = `usage:
  imagegen run <job.json> [--json] [--concurrency N] [--provider offline|gemini] [--data-dir DIR] [--open [--port N] [--host HOST]]
  imagegen submit <job.json> [--json] [--data-dir DIR] [--open]
  imagegen worker [--concurrency N] [--provider offline|gemini] [--data-dir DIR] [--metrics-port N] [--metrics-host HOST]
  imagegen status <jobId> [--json] [--data-dir DIR]
  imagegen watch <jobId> [--json] [--data-dir DIR]
  imagegen cancel <jobId> [--json] [--data-dir DIR]
  imagegen stats [--json] [--data-dir DIR]
  imagegen workers [--json] [--data-dir DIR]
  imagegen credits grant <userId> <amount> [--json] [--data-dir DIR]
  imagegen credits balance <userId> [--json] [--data-dir DIR]
  imagegen webhooks <jobId> [--redeliver] [--json] [--data-dir DIR]
  imagegen webhooks secret <userId> [--json] [--data-dir DIR]
  imagegen serve [--port 8080] [--host 127.0.0.1] [--with-worker] [--concurrency N] [--provider offline|gemini] [--data-dir DIR]
  imagegen --version [--json]

exit codes: 0 completed, 1 ended short or could not run, 2 invalid input, 3 not enough credits`;

export const OPTIONS = {
  json: { type: 'boolean' },
  concurrency: { type: 'string' },
  provider: { type: 'string' },
  'data-dir': { type: 'string' },
  'metrics-port': { type: 'string' },
  'metrics-host': { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  'with-worker': { type: 'boolean' },
  open: { type: 'boolean' },
  redeliver: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
} as const;

export type OptionName = keyof typeof OPTIONS;
export type Values = { readonly [K in OptionName]?: (typeof OPTIONS)[K]['type'] extends 'boolean' ? boolean : string };

/** Per command: its positional arguments (by name, all required) and the options it takes. */
const COMMANDS: Readonly<Record<string, { readonly args: readonly string[]; readonly options: readonly OptionName[] }>> = {
  run: { args: ['<job.json>'], options: ['json', 'concurrency', 'provider', 'data-dir', 'open', 'port', 'host'] },
  submit: { args: ['<job.json>'], options: ['json', 'data-dir', 'open'] },
  worker: { args: [], options: ['concurrency', 'provider', 'data-dir', 'metrics-port', 'metrics-host'] },
  status: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  watch: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  cancel: { args: ['<jobId>'], options: ['json', 'data-dir'] },
  stats: { args: [], options: ['json', 'data-dir'] },
  workers: { args: [], options: ['json', 'data-dir'] },
  'credits grant': { args: ['<userId>', '<amount>'], options: ['json', 'data-dir'] },
  'credits balance': { args: ['<userId>'], options: ['json', 'data-dir'] },
  webhooks: { args: ['<jobId>'], options: ['json', 'data-dir', 'redeliver'] },
  'webhooks secret': { args: ['<userId>'], options: ['json', 'data-dir'] },
  serve: { args: [], options: ['port', 'host', 'with-worker', 'concurrency', 'provider', 'data-dir'] },
};

/** What one command invocation gets: its checked arguments, the configuration and the output mode. */
export interface Invocation {
  readonly args: readonly string[];
  readonly values: Values;
  readonly config: PipelineConfig;
  readonly json: boolean;
  /** Opens the command's pipeline. Default {@link openPipeline}; `npm run demo` lends one it keeps open across its commands. */
  readonly openPipeline?: ((config: PipelineConfig) => Promise<Pipeline>) | undefined;
  /** Called just before the command opens its database (the `imagegen` program and the demo tune their process there: `beforeOwnDatabase`). */
  readonly beforeDatabase?: ((opening: DatabaseOpening) => void) | undefined;
}

/** What a command is about to open. */
export interface DatabaseOpening {
  /** PGlite (no `DATABASE_URL`): postgres compiled to WASM starts in this process. */
  readonly embedded: boolean;
  /** The command runs jobs (`run`, `worker`, `serve`, `submit`): the helper threads start (database, image). */
  readonly runsJobs: boolean;
  /** The policy asked for the helper threads (`IMAGEGEN_HELPER_THREADS`). */
  readonly helperThreads: 'batch' | 'normal';
}

export function exitCodeOf(summary: Pick<JobSummary, 'status'>): number {
  return summary.status === 'completed' ? EXIT.completed : EXIT.short;
}

export function print(json: boolean, value: unknown, text: string): void {
  process.stdout.write(json ? `${JSON.stringify(value)}\n` : `${text}\n`);
}

/**
 * Whether the embedded database of this configuration has never been created. A
 * command that only reads, or a submit refused on what an empty database holds,
 * answers without creating it (`openPipeline` puts PGlite in `<data dir>/db`).
 */
export function embeddedDatabaseMissing(config: PipelineConfig): boolean {
  return !config.databaseUrl && !existsSync(join(config.dataDir, 'db'));
}

/** The variable or flag the data folder came from, for messages. */
export function dataDirSource(values: Values): string {
  return values['data-dir'] !== undefined ? '--data-dir' : 'IMAGEGEN_DATA_DIR';
}

/** A data folder that exists as a file can never work: bad configuration (exit 2), found before anything else. */
export function checkDataDir(config: PipelineConfig, values: Values): void {
  const usesDataDir = !config.databaseUrl || config.storage.kind === 'folder';
  if (usesDataDir && existsSync(config.dataDir) && !statSync(config.dataDir).isDirectory()) {
    throw new ConfigError(dataDirSource(values), `${config.dataDir} is a file, not a folder`);
  }
}

/**
 * The embedded database's `shared_buffers` for a command of a few queries: PGlite zeroes its
 * buffers at every start, and 4 MB instead of 16 starts `credits balance` ~30 ms sooner
 * (BENCHMARKS.md 11D). A command that runs jobs keeps the default (its tables grow with them).
 */
export const QUERY_COMMAND_SHARED_BUFFERS = '4MB';

/**
 * Opens the pipeline for a command, turning the ways opening fails into errors that
 * say what to fix: a data folder that cannot be written, a database that cannot be
 * reached or refuses.
 */
export async function withPipeline<T>(inv: Invocation, fn: (pipeline: Pipeline) => Promise<T>, options: { readonly runsJobs?: boolean } = {}): Promise<T> {
  let pipeline: Pipeline;
  inv.beforeDatabase?.({ embedded: !inv.config.databaseUrl, runsJobs: options.runsJobs ?? false, helperThreads: inv.config.helperThreads });
  try {
    // A command that runs jobs gets the embedded database in a thread of its own (its event
    // loop carries the answers, images and events) and the image thread; one of a few queries
    // starts sooner without them (unless IMAGEGEN_PGLITE_THREAD / IMAGEGEN_PG_THREAD / IMAGEGEN_IMAGE_THREAD say otherwise).
    pipeline = inv.openPipeline
      ? await inv.openPipeline(inv.config)
      : await openPipeline(inv.config, {
          pgliteThread: options.runsJobs ?? false,
          pgThread: options.runsJobs ?? false,
          imageThread: options.runsJobs ?? false,
          ...(options.runsJobs ? {} : { pgliteSharedBuffers: QUERY_COMMAND_SHARED_BUFFERS }),
        });
  } catch (error) {
    throw openFailure(error, inv);
  }
  try {
    return await fn(pipeline);
  } finally {
    await pipeline.close();
  }
}

/** {@link withPipeline} for a command that runs jobs (`run`, `serve`, `worker`, `submit`). */
export function withJobsPipeline<T>(inv: Invocation, fn: (pipeline: Pipeline) => Promise<T>): Promise<T> {
  return withPipeline(inv, fn, { runsJobs: true });
}

export function openFailure(error: unknown, inv: Invocation): unknown {
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

/** How a command says it heard a shutdown signal: the first (`count` 1) finishes what is in flight, the next aborts. */
export type SignalNotice = (signal: NodeJS.Signals, count: number) => void;

/** `run`'s: a line of text among its progress lines on stderr. */
export const textSignalNotice: SignalNotice = (signal, count) => {
  process.stderr.write(`\n${signal}: ${count === 1 ? 'finishing in-flight attempts; the job can be resumed' : 'aborting'}\n`);
};

/**
 * `worker`'s and `serve`'s: one more JSON line of their log (their stderr is pino's JSON
 * lines only, for a log collector), with the signal as a field.
 */
export function loggedSignalNotice(logger: Logger): SignalNotice {
  return (signal, count) => {
    if (count === 1) logger.info({ signal }, 'signal received: finishing in-flight attempts');
    else logger.warn({ signal }, 'signal received again: aborting in-flight attempts');
  };
}

/** SIGINT/SIGTERM: stop taking new slots; a second signal aborts in-flight attempts. */
export function shutdownSignals(notice: SignalNotice = textSignalNotice): { stop$: Subject<void>; dispose: () => void } {
  const stop$ = new Subject<void>();
  let count = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    count++;
    notice(signal, count);
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

/**
 * The command named by the positionals and its arguments, checked: a known command,
 * exactly its arguments (none empty), only options it takes, no empty option value.
 */
export function resolveCommand(positionals: readonly string[], values: Values): { name: string; args: string[] } {
  const [first, ...rest] = positionals;
  if (first === undefined) throw new UsageError('<command>', 'is required');
  let name = first;
  let args = rest;
  // `webhooks secret <userId>` is the secret; `webhooks <jobId>` a job's deliveries (so a job named "secret" is listed by no command).
  if (first === 'webhooks' && rest[0] === 'secret') {
    name = 'webhooks secret';
    args = rest.slice(1);
  }
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
    if (value === undefined || option === 'help' || option === 'version') continue;
    if (!command.options.includes(option)) throw new UsageError(`--${option}`, `is not an option of imagegen ${name}`);
    if (typeof value === 'string' && value.trim() === '') throw new UsageError(`--${option}`, 'must not be empty');
  }
  return { name, args };
}

/** The package's name, as its package.json says it. */
export const PACKAGE_NAME = 'imagegen-pipeline';

/**
 * This package's version (`imagegen --version`): from the first package.json named
 * `imagegen-pipeline` in this module's folder or above it, the same file whether the command
 * runs from the repository, from `dist/`, from its bundle or from `node_modules`.
 */
export function packageVersion(from: string = import.meta.url): string {
  for (let dir = dirname(fileURLToPath(from)); ; dir = dirname(dir)) {
    const file = join(dir, 'package.json');
    if (existsSync(file)) {
      const manifest = JSON.parse(readFileSync(file, 'utf8')) as { name?: unknown; version?: unknown };
      if (manifest.name === PACKAGE_NAME && typeof manifest.version === 'string') return manifest.version;
    }
    if (dirname(dir) === dir) throw new Error(`no package.json of ${PACKAGE_NAME} above ${fileURLToPath(from)}`);
  }
}
