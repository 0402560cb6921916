/**
 * Runs the BUILT `imagegen` CLI (`dist/cli.js`) as a child process, the way a user
 * does, and gives tests what they need around it: temp data dirs, job files with a
 * real input image, the generated files on disk, and a read-only look at the
 * database after the CLI exited.
 *
 * The tests assume `npm run build` ran (the CI builds before `npm test`); a missing
 * `dist/cli.js` fails with a message saying so.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { openDatabase, type DatabaseConfig } from '../../../src/db/database.js';
import { readStamp } from '../../support/stamped-image.js';

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const CLI_PATH = join(REPO_ROOT, 'dist', 'cli.js');

/** Fails loudly when the CLI was not built: these tests run `node dist/cli.js`. */
export function assertCliBuilt(): void {
  if (!existsSync(CLI_PATH)) {
    throw new Error(`${CLI_PATH} is missing: the e2e tests run the built CLI; run \`npm run build\` first`);
  }
}

/** Variables of the parent that must not leak into the child (the test sets what it wants). */
const SCRUBBED = /^(DATABASE_URL|GEMINI_|IMAGEGEN_|S3_|AWS_)/;

/**
 * The child's environment: the parent's minus every imagegen/Gemini/S3/DB variable,
 * plus fast-test defaults (small backoff, fast progress) and `extra`.
 */
export function cliEnv(extra: Record<string, string | undefined>): NodeJS.ProcessEnv {
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

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A CLI process started in the background. */
export interface CliProcess {
  readonly child: ChildProcess;
  /** Everything written to stderr so far. */
  stderr(): string;
  stdout(): string;
  /** Resolves when the process exits. */
  readonly done: Promise<CliResult>;
}

const live = new Set<ChildProcess>();

/** Starts `node dist/cli.js ...args` in the background. */
export function startCli(args: readonly string[], options: { env: NodeJS.ProcessEnv; cwd?: string }): CliProcess {
  assertCliBuilt();
  const child = spawn(process.execPath, [CLI_PATH, ...args], { env: options.env, cwd: options.cwd ?? REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr?.setEncoding('utf8').on('data', (d: string) => (err += d));
  const done = new Promise<CliResult>((resolvePromise, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      live.delete(child);
      resolvePromise({ code, signal, stdout: out, stderr: err });
    });
  });
  return { child, stderr: () => err, stdout: () => out, done };
}

/** Runs the CLI to its end; kills it (and fails) after `timeoutMs`. */
export async function runCli(args: readonly string[], options: { env: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number }): Promise<CliResult> {
  const proc = startCli(args, options);
  const timeoutMs = options.timeoutMs ?? 60_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      proc.child.kill('SIGKILL');
      reject(new Error(`imagegen ${args.join(' ')} did not end within ${timeoutMs} ms\nstderr:\n${proc.stderr()}`));
    }, timeoutMs);
  });
  try {
    return await Promise.race([proc.done, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Kills every CLI process a test left running (afterEach/afterAll). */
export async function killLiveCliProcesses(): Promise<void> {
  const waits = [...live].map(
    (child) =>
      new Promise<void>((resolvePromise) => {
        child.once('close', () => resolvePromise());
        child.kill('SIGKILL');
      }),
  );
  await Promise.all(waits);
}

/** Waits until `predicate` is true, polling; fails with `what` after `timeoutMs`. */
export async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 30_000, everyMs = 50): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A temp folder holding a job's files and (under `data/`) the CLI's data dir. */
export interface Workspace {
  readonly root: string;
  readonly dataDir: string;
  /** Writes `job.json`-like files (an object is JSON-encoded) and returns the path. */
  writeJob(name: string, content: unknown): Promise<string>;
  dispose(): Promise<void>;
}

export async function createWorkspace(): Promise<Workspace> {
  const root = await mkdtemp(join(tmpdir(), 'imagegen-e2e-'));
  // A real input image, next to the job files (stages refer to it relative to the job file).
  await sharp({ create: { width: 32, height: 18, channels: 3, background: '#6a8caf' } })
    .png()
    .toFile(join(root, 'input.png'));
  return {
    root,
    dataDir: join(root, 'data'),
    async writeJob(name, content) {
      const path = join(root, name);
      await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
      return path;
    },
    dispose: () => rm(root, { recursive: true, force: true }),
  };
}

/** A job file body: stages given as `[prompt, quantity]`, each with the workspace's input image. */
export function jobSpec(jobId: string, userId: string, stages: readonly (readonly [string, number])[]): unknown {
  return {
    jobId,
    userId,
    stages: stages.map(([prompt, quantity]) => ({ prompt, quantity, 'aspect-ratio': '1:1', inputImage: 'input.png' })),
  };
}

/** Generated files of a job in the folder store, relative to `<storage>/generated/<jobId>/` (e.g. `0/3-1.webp`). */
export async function generatedFiles(storageRoot: string, jobId: string): Promise<string[]> {
  const base = join(storageRoot, 'generated', jobId);
  if (!existsSync(base)) return [];
  const entries = await readdir(base, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(base, join(e.parentPath, e.name)))
    .sort();
}

/** The stamps (fake server call numbers) carried by the generated images of a job (folder-store temp files `.tmp-*` skipped). */
export async function stampsOnDisk(storageRoot: string, jobId: string): Promise<number[]> {
  const files = (await generatedFiles(storageRoot, jobId)).filter((f) => !/(^|\/)\.tmp-/.test(f));
  return Promise.all(files.map(async (f) => readStamp(new Uint8Array(await readFile(join(storageRoot, 'generated', jobId, f))))));
}

/** The `--json` summary contract of `run` / `status`. */
export interface Summary {
  jobId: string;
  status: string;
  totalImages: number;
  deliveredImages: number;
  attachIds: string[];
  stages: { index: number; quantity: number; delivered: number; attachIds: string[]; shortfall: null | { count: number; reason: string; errorClass?: string | null } }[];
  attempts: { total: number; failed: number; byClass: Record<string, number> };
  credits: { reserved: number; captured: number; released: number };
}

/** Parses stdout that must be exactly one JSON object (one line). */
export function parseSingleJson<T>(stdout: string): T {
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  if (lines.length !== 1) throw new Error(`stdout must hold exactly one JSON line, got ${lines.length}:\n${stdout}`);
  return JSON.parse(lines[0] as string) as T;
}

/** What the database holds about a job, read after the CLI processes ended. */
export interface DbView {
  jobs: number;
  attachments: { id: string; stage: number; slot: number; attempt: number; storageKey: string }[];
  ledger: { kind: string; amount: number; attachId: string | null }[];
  attempts: number;
  balance: { balance: number; reserved: number } | undefined;
  /** Whole-database counts: jobs, attachments (inputs included), ledger rows other than grants, attempts. */
  totals: { jobs: number; attachments: number; nonGrantLedger: number; attempts: number };
}

/** Opens the database (PGlite of a data dir, or PostgreSQL) read-only-by-convention and reads a job's rows. */
export async function readDb(config: DatabaseConfig, jobId: string, userId: string): Promise<DbView> {
  const database = await openDatabase(config);
  try {
    const { db } = database;
    const jobs = await db.selectFrom('jobs').select((eb) => eb.fn.countAll<number>().as('n')).where('id', '=', jobId).executeTakeFirstOrThrow();
    const attachments = await db
      .selectFrom('attachments')
      .select(['id', 'stage_index', 'slot_index', 'attempt', 'storage_key'])
      .where('job_id', '=', jobId)
      .orderBy('stage_index')
      .orderBy('slot_index')
      .execute();
    const ledger = await db.selectFrom('credit_ledger').select(['kind', 'amount', 'attach_id']).where('job_id', '=', jobId).execute();
    const attempts = await db.selectFrom('attempts').select((eb) => eb.fn.countAll<number>().as('n')).where('job_id', '=', jobId).executeTakeFirstOrThrow();
    const balance = await db.selectFrom('credit_accounts').select(['balance', 'reserved']).where('user_id', '=', userId).executeTakeFirst();
    const count = async (q: Promise<{ n: number | string | bigint }>) => Number((await q).n);
    const totals = {
      jobs: await count(db.selectFrom('jobs').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
      attachments: await count(db.selectFrom('attachments').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
      nonGrantLedger: await count(db.selectFrom('credit_ledger').select((eb) => eb.fn.countAll<number>().as('n')).where('kind', '!=', 'grant').executeTakeFirstOrThrow()),
      attempts: await count(db.selectFrom('attempts').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
    };
    return {
      totals,
      jobs: Number(jobs.n),
      attachments: attachments.map((a) => ({ id: a.id, stage: Number(a.stage_index), slot: Number(a.slot_index), attempt: Number(a.attempt), storageKey: a.storage_key })),
      ledger: ledger.map((l) => ({ kind: l.kind, amount: Number(l.amount), attachId: l.attach_id })),
      attempts: Number(attempts.n),
      balance: balance ? { balance: Number(balance.balance), reserved: Number(balance.reserved) } : undefined,
    };
  } finally {
    await database.close();
  }
}

/** The PGlite config of a CLI data dir (`<data dir>/db`). */
export function pgliteOf(dataDir: string): DatabaseConfig {
  return { dataDir: join(dataDir, 'db') };
}
