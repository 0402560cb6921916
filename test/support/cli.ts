/**
 * Runs the real `imagegen` CLI in a child process, the way a user does: the one CLI
 * harness of the e2e and reliability suites.
 *
 * Which build runs is `cliEntry`'s choice (see cli-entry.ts): by default `src/` compiled
 * by source hash, so no suite runs a stale `dist/`; `{ built: true }` runs `dist/cli.js`,
 * checked to be fresh. The child gets exactly the `env` it is given (plus PATH and HOME);
 * `cliEnv` builds one from this process's environment without any variable that would
 * point the child at the developer's own database, bucket or Gemini key.
 *
 *   startCli(args) --spawn--> child ---stdout/stderr--> collected
 *                                   `--close--> exited: { code, signal, stdout, stderr }
 *   runCli(args, { timeoutMs }) = startCli, then SIGKILL at timeoutMs (resolved as killed)
 *
 * Workspaces, job files, generated files and the database look are in cli-workspace.ts.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { cliEntry, REPO_ROOT } from './cli-entry.js';

export { cliEntry, DIST_CLI, REPO_ROOT, type CliEntryOptions } from './cli-entry.js';

/** Variables of the parent that must not leak into the child (the test sets what it wants). */
const SCRUBBED = /^(DATABASE_URL|GEMINI_|IMAGEGEN_|S3_|AWS_)/;

/**
 * A child environment: this process's minus every imagegen/Gemini/S3/AWS/database variable,
 * plus fast-test defaults (small backoff, fast progress, info logs), then `extra` (an
 * `undefined` value removes the variable).
 *
 * @example
 *   cliEnv({ IMAGEGEN_DATA_DIR: dir, GEMINI_BASE_URL: server.url, GEMINI_API_KEY: server.apiKey })
 */
export function cliEnv(extra: Readonly<Record<string, string | undefined>> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!SCRUBBED.test(k)) env[k] = v;
  Object.assign(env, {
    IMAGEGEN_BACKOFF_BASE_MS: '20',
    IMAGEGEN_BACKOFF_MAX_MS: '200',
    IMAGEGEN_PROGRESS_INTERVAL_MS: '50',
    IMAGEGEN_LOG_LEVEL: 'info',
  });
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/**
 * The CLI's settings for a job against a fake Gemini server: its key and URL, the price, short
 * backoff, fast progress, warnings only, the data folder, and the scratch database's URL when
 * it has one (PGlite otherwise).
 */
export function geminiCliEnv(options: {
  readonly server: { readonly apiKey: string; readonly url: string };
  readonly dataDir: string;
  readonly price: number;
  readonly databaseUrl?: string | undefined;
}): Record<string, string> {
  return {
    IMAGEGEN_DATA_DIR: options.dataDir,
    IMAGEGEN_PROVIDER: 'gemini',
    GEMINI_API_KEY: options.server.apiKey,
    GEMINI_BASE_URL: options.server.url,
    IMAGEGEN_PRICE_PER_IMAGE: String(options.price),
    IMAGEGEN_BACKOFF_BASE_MS: '5',
    IMAGEGEN_BACKOFF_MAX_MS: '50',
    IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
    IMAGEGEN_LOG_LEVEL: 'warn',
    ...(options.databaseUrl ? { DATABASE_URL: options.databaseUrl } : {}),
  };
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A CLI process started in the background, with its output so far. */
export interface CliProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited and its pipes closed. */
  readonly exited: Promise<CliResult>;
}

/** How to start the CLI. */
export interface StartCliOptions {
  /** The child's environment, exactly (PATH and HOME added when absent); `undefined` values are left out. */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** Working directory (job file paths are relative to it). Default: the repository root. */
  readonly cwd?: string;
  /** Run `dist/cli.js` instead of the build of `src/` (see `cliEntry`). Default false. */
  readonly built?: boolean;
}

export interface RunCliOptions extends StartCliOptions {
  /** After this long the process is SIGKILLed and resolves as killed. Default 60 s. */
  readonly timeoutMs?: number;
}

/** Children not yet closed, for `killLiveCliProcesses`. */
const live = new Set<ChildProcess>();

/**
 * Starts `imagegen <args>` in the background; resolves once spawned (after compiling the
 * CLI if this source state has no build yet).
 *
 * @example
 *   const worker = await startCli(['worker'], { env, cwd: dir });
 *   worker.child.kill('SIGTERM');
 *   expect((await worker.exited).code).toBe(0);
 */
export async function startCli(args: readonly string[], options: StartCliOptions): Promise<CliProcess> {
  const entry = await cliEntry({ built: options.built ?? false });
  const child = spawn(process.execPath, [entry, ...args], {
    cwd: options.cwd ?? REPO_ROOT,
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exited = new Promise<CliResult>((resolveExit, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      live.delete(child);
      resolveExit({ code, signal, stdout: out, stderr: err });
    });
  });
  return { child, stdout: () => out, stderr: () => err, exited };
}

/**
 * Runs `imagegen <args>` to its end. A process still running after `timeoutMs` is
 * SIGKILLed and resolves as killed (`signal: 'SIGKILL'`), so a caller may treat a hang
 * like any other failed run (a supervisor would restart it).
 */
export async function runCli(args: readonly string[], options: RunCliOptions): Promise<CliResult> {
  const proc = await startCli(args, options);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Kills every CLI process a test left running (for afterEach/afterAll) and waits for them to close. */
export async function killLiveCliProcesses(): Promise<void> {
  const waits = [...live].map(
    (child) =>
      new Promise<void>((resolveClose) => {
        child.once('close', () => resolveClose());
        child.kill('SIGKILL');
      }),
  );
  await Promise.all(waits);
}

/** Waits until `predicate` is true, polling every `everyMs`; fails naming `what` after `timeoutMs`. */
export async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * The pino JSON lines of a CLI's stderr whose `msg` is `msg`, parsed (text lines and
 * partial lines skipped), in order.
 *
 * @example
 *   logLines(worker.stderr(), 'worker started')[0]  // { level: 30, jobConcurrency: 2, ... }
 */
export function logLines(stderr: string, msg: string): Record<string, unknown>[] {
  return stderr
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .flatMap((line) => {
      try {
        const entry = JSON.parse(line) as Record<string, unknown>;
        return entry['msg'] === msg ? [entry] : [];
      } catch {
        return [];
      }
    });
}

/**
 * The lines of a stderr that are not JSON objects (blank lines left out): where a command's
 * stderr is its pino log (`worker`, `serve`), a log collector reads each as garbage.
 */
export function textLines(stderr: string): string[] {
  return stderr.split('\n').filter((line) => {
    if (line.trim() === '') return false;
    try {
      const value: unknown = JSON.parse(line);
      return typeof value !== 'object' || value === null || Array.isArray(value);
    } catch {
      return true;
    }
  });
}

/** jobIds a worker's stderr says it took (its `{"jobId":...,"msg":"job taken"}` lines). */
export function jobsTaken(stderr: string): Set<string> {
  return new Set(logLines(stderr, 'job taken').flatMap((entry) => (typeof entry['jobId'] === 'string' && entry['jobId'] !== '' ? [entry['jobId']] : [])));
}

/**
 * SIGCONTs and SIGTERMs every worker still running and waits for each to exit 0 (a SIGKILLed one is left
 * as it ended). A worker that has not exited after `graceMs` is SIGKILLed and the call
 * throws with the tail of its stderr: a worker that hangs on shutdown is a named failure,
 * not a test timeout. Default grace 45 s (the workers' own shutdown grace is 30 s).
 */
export async function stopWorkers(workers: readonly CliProcess[], graceMs = 45_000): Promise<void> {
  const running = (w: CliProcess) => w.child.exitCode === null && w.child.signalCode === null;
  // SIGCONT first: a worker a test left paused (SIGSTOP) would hold the SIGTERM until continued.
  for (const w of workers) if (running(w)) w.child.kill('SIGCONT');
  for (const w of workers) if (running(w)) w.child.kill('SIGTERM');
  const problems: string[] = [];
  for (const w of workers) {
    let timer: NodeJS.Timeout | undefined;
    const hung = new Promise<'hung'>((resolve) => (timer = setTimeout(() => resolve('hung'), graceMs)));
    const ended = await Promise.race([w.exited, hung]);
    clearTimeout(timer);
    if (ended === 'hung') {
      w.child.kill('SIGKILL');
      problems.push(`worker ${w.child.pid} did not exit within ${graceMs} ms of SIGTERM:\n${w.stderr().slice(-3000)}`);
    } else if (ended.signal !== 'SIGKILL' && ended.code !== 0) {
      problems.push(`worker ${w.child.pid} exited ${ended.code ?? ended.signal}:\n${ended.stderr.slice(-3000)}`);
    }
  }
  if (problems.length > 0) throw new Error(problems.join('\n\n'));
}
