/**
 * The fleet, measured with real `imagegen worker` processes (the built CLI) on PostgreSQL
 * and the Gemini-protocol server in this process. Each figure beside the same run without
 * the feature, so the gain is a ratio from one run:
 *
 * A. one provider limit: 1, 2, 3 workers of `--concurrency 8` against a provider that
 *    refuses above 6 calls in flight; 429 share and makespan / the quota's bound
 *    (`ceil(images / 6) x latency`), `IMAGEGEN_PROVIDER_LIMIT_SCOPE=fleet` vs `process`.
 * B. failover: two workers, the one running the job SIGKILLed; seconds from the kill to the
 *    takeover and to the end, default lease TTL (15 s). The old design (a queue expiry of
 *    600 s) is gone; issue 12 measured it: one job still unfinished 240 s after the kill.
 * C. a small job under a big one: one worker, another user's 10-image job submitted while a
 *    300-image job runs; its wait for the first call and its time to finish, against the
 *    same small job alone; `IMAGEGEN_FAIR_SHARE=on` vs `off`.
 *
 * Run: `npm run bench:build && DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node dist-bench/bench/fleet.js [limit|failover|fair]`
 * (`BENCH_WORKERS=3 BENCH_SCOPES=fleet BENCH_TRACE=1` for one case of A with the shared limit's timeline).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import sharp from 'sharp';
import { startFakeGeminiServer, type FakeGeminiServer } from '../test/support/fake-gemini-server.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');
const BASE_URL = process.env['DATABASE_URL'];

interface Proc {
  readonly child: ChildProcess;
  stderr(): string;
  readonly exited: Promise<number | null>;
}

function start(args: readonly string[], env: NodeJS.ProcessEnv): Proc {
  const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout!.resume();
  const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  return { child, stderr: () => err, exited };
}

async function run(args: readonly string[], env: NodeJS.ProcessEnv): Promise<void> {
  const p = start(args, env);
  const code = await p.exited;
  if (code !== 0) throw new Error(`imagegen ${args.join(' ')} exited ${code}:\n${p.stderr()}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, predicate: () => Promise<boolean> | boolean, timeoutMs = 300_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** A scratch database and folder; `env` points the CLI at them and at `server`. */
async function world(server: FakeGeminiServer, extra: Record<string, string> = {}) {
  const admin = new pg.Client({ connectionString: BASE_URL });
  await admin.connect();
  const name = `imagegen_bench_${randomBytes(5).toString('hex')}`;
  await admin.query(`create database ${name}`);
  const url = new URL(BASE_URL!);
  url.pathname = `/${name}`;
  const dir = await mkdtemp(join(tmpdir(), 'imagegen-fleet-bench-'));
  await sharp({ create: { width: 32, height: 18, channels: 3, background: '#6a8caf' } }).png().toFile(join(dir, 'input.png'));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env['PATH'],
    HOME: process.env['HOME'],
    DATABASE_URL: url.toString(),
    IMAGEGEN_DATA_DIR: join(dir, 'data'),
    GEMINI_API_KEY: server.apiKey,
    GEMINI_BASE_URL: server.url,
    IMAGEGEN_LOG_LEVEL: 'info',
    IMAGEGEN_BACKOFF_BASE_MS: '100',
    IMAGEGEN_BACKOFF_MAX_MS: '2000',
    IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '50',
    IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '1000',
    ...extra,
  };
  const db = new pg.Client({ connectionString: url.toString() });
  await db.connect();
  const workers: Proc[] = [];
  return {
    env,
    workers,
    async submit(jobId: string, userId: string, stages: readonly [string, number][]): Promise<void> {
      const file = join(dir, `${jobId}.json`);
      await writeFile(file, JSON.stringify({ jobId, userId, stages: stages.map(([prompt, quantity]) => ({ prompt, quantity, 'aspect-ratio': '1:1', inputImage: 'input.png' })) }));
      await run(['credits', 'grant', userId, String(stages.reduce((sum, [, q]) => sum + q, 0))], env);
      await run(['submit', file], env);
    },
    worker(name: string, args: string[] = [], more: Record<string, string> = {}): Proc {
      const w = start(['worker', ...args], { ...env, IMAGEGEN_WORKER_NAME: name, ...more });
      workers.push(w);
      return w;
    },
    async query<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
      return (await db.query<T>(text, values)).rows;
    },
    async close(): Promise<void> {
      for (const w of workers) if (w.child.exitCode === null && w.child.signalCode === null) w.child.kill('SIGTERM');
      await Promise.all(workers.map((w) => w.exited));
      await db.end().catch(() => undefined);
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function jobTakenAt(stderr: string, jobId: string): { time: number; via: string } | undefined {
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    const e = JSON.parse(line) as Record<string, unknown>;
    if (e['msg'] === 'job taken' && e['jobId'] === jobId) return { time: Number(e['time']), via: String(e['via']) };
  }
  return undefined;
}

/** A: the shared provider limit. */
async function sharedLimit(workers: number, scope: 'fleet' | 'process'): Promise<{ refused: number; calls: number; ratio: number }> {
  const LATENCY = 300;
  const IMAGES = 3 * 2 * 30;
  let first = 0;
  const server = await startFakeGeminiServer({
    maxInFlight: 6,
    latencyMs: () => {
      first ||= Date.now();
      return LATENCY;
    },
  });
  const w = await world(server, { IMAGEGEN_PROVIDER_LIMIT_SCOPE: scope });
  try {
    for (let j = 0; j < 3; j++) await w.submit(`a-${j}`, `user-${j}`, [[`a${j} one`, 30], [`a${j} two`, 30]]);
    for (let i = 0; i < workers; i++) w.worker(`bench-${i}`, ['--concurrency', '8']);
    // BENCH_TRACE=1: the shared limit every 100 ms, to see where the refusals come from.
    const trace: string[] = [];
    let lastTrace = '';
    await until('all jobs to complete', async () => {
      if (process.env['BENCH_TRACE'] === '1' && first) {
        const limits = await w.query<{ current_limit: number; last_cut_at: number }>(`select current_limit, last_cut_at from provider_limits`);
        const refused = server.requests.filter((r) => r.behavior === 'status:429').length;
        const line = `limit ${limits.map((l) => `${l.current_limit} (cut at ${l.last_cut_at})`).join(',')} in flight ${server.inFlight()} refused ${refused}`;
        if (line !== lastTrace) trace.push(`${((Date.now() - first) / 1000).toFixed(1).padStart(5)} s  ${line}`);
        lastTrace = line;
      }
      return (await w.query<{ n: string }>(`select count(*) as n from jobs where status = 'completed'`))[0]!.n === '3';
    });
    if (trace.length > 0) console.log(trace.join('\n'));
    const [row] = await w.query<{ last: Date }>(`select max(finished_at) as last from jobs`);
    const makespan = new Date(row!.last).getTime() - first;
    const bound = Math.ceil(IMAGES / 6) * LATENCY;
    const refused = server.requests.filter((r) => r.behavior === 'status:429').length;
    return { refused, calls: server.requests.length, ratio: makespan / bound };
  } finally {
    await w.close();
    await server.close();
  }
}

/** B: failover with the default lease TTL. */
async function failover(): Promise<{ takeoverS: number; endS: number }> {
  const server = await startFakeGeminiServer({ latencyMs: 300 });
  const w = await world(server);
  try {
    await w.submit('b-job', 'user-b', [['b one', 40], ['b two', 40], ['b three', 40]]);
    const a = w.worker('fail-a', ['--concurrency', '4']);
    const b = w.worker('fail-b', ['--concurrency', '4']);
    await until('the job to be taken and deliver 15', async () => (await w.query<{ delivered: number }>(`select delivered from jobs where id = 'b-job'`))[0]!.delivered >= 15);
    const holder = jobTakenAt(a.stderr(), 'b-job') ? a : b;
    const other = holder === a ? b : a;
    holder.child.kill('SIGKILL');
    const killedAt = Date.now();
    await until('the takeover', () => jobTakenAt(other.stderr(), 'b-job') !== undefined);
    const takeover = jobTakenAt(other.stderr(), 'b-job')!;
    await until('the job to complete', async () => (await w.query<{ status: string }>(`select status from jobs where id = 'b-job'`))[0]!.status === 'completed');
    const [row] = await w.query<{ finished: Date }>(`select finished_at as finished from jobs where id = 'b-job'`);
    return { takeoverS: (takeover.time - killedAt) / 1000, endS: (new Date(row!.finished).getTime() - killedAt) / 1000 };
  } finally {
    await w.close();
    await server.close();
  }
}

/** C: a small job of another user while a big one runs (or alone). */
async function smallJob(fair: boolean, withBig: boolean): Promise<{ firstCallS: number; doneS: number }> {
  let submittedAt = 0;
  let firstSmall = 0;
  const server = await startFakeGeminiServer({
    latencyMs: ({ body }) => {
      if (!firstSmall && submittedAt && JSON.stringify(body).includes('small one')) firstSmall = Date.now();
      return 300;
    },
  });
  const w = await world(server, { IMAGEGEN_FAIR_SHARE: fair ? 'on' : 'off', IMAGEGEN_STAGE_CONCURRENCY: '100', IMAGEGEN_WORKER_JOBS: '2' });
  try {
    w.worker('fair', ['--concurrency', '4']);
    if (withBig) {
      await w.submit('c-big', 'user-big', [['big one', 150], ['big two', 150]]);
      await until('the big job to deliver 20', async () => ((await w.query<{ delivered: number }>(`select delivered from jobs where id = 'c-big'`))[0]?.delivered ?? 0) >= 20);
    }
    submittedAt = Date.now();
    await w.submit('c-small', 'user-small', [['small one', 10]]);
    await until('the small job to complete', async () => (await w.query<{ status: string }>(`select status from jobs where id = 'c-small'`))[0]?.status === 'completed', 600_000);
    const [row] = await w.query<{ finished: Date }>(`select finished_at as finished from jobs where id = 'c-small'`);
    return { firstCallS: (firstSmall - submittedAt) / 1000, doneS: (new Date(row!.finished).getTime() - submittedAt) / 1000 };
  } finally {
    await w.close();
    await server.close();
  }
}

if (!BASE_URL) {
  console.error('bench/fleet needs PostgreSQL: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)');
  process.exit(2);
}
if (!existsSync(CLI)) {
  console.error(`build the CLI first (npm run build): ${CLI} is missing`);
  process.exit(2);
}
const only = process.argv[2];
if (!only || only === 'limit') {
  console.log('A. one provider limit: --concurrency 8 per worker, provider refuses above 6 in flight, 180 images of 300 ms');
  console.log('workers | scope   | 429s / calls     | makespan / bound');
  const counts = (process.env['BENCH_WORKERS'] ?? '1,2,3').split(',').map(Number);
  const scopes = (process.env['BENCH_SCOPES'] ?? 'process,fleet').split(',') as ('process' | 'fleet')[];
  for (const n of counts) {
    for (const scope of scopes) {
      const r = await sharedLimit(n, scope);
      console.log(`${n}       | ${scope.padEnd(7)} | ${String(r.refused).padStart(3)} / ${String(r.calls).padEnd(4)} (${((100 * r.refused) / r.calls).toFixed(1).padStart(4)}%) | ${r.ratio.toFixed(2)}`);
    }
  }
}
if (!only || only === 'failover') {
  const r = await failover();
  console.log(`B. failover (default TTL 15 s): running again on another worker ${r.takeoverS.toFixed(1)} s after the SIGKILL; job complete ${r.endS.toFixed(1)} s after it`);
}
if (!only || only === 'fair') {
  const alone = await smallJob(true, false);
  const fair = await smallJob(true, true);
  const fifo = await smallJob(false, true);
  console.log('C. a 10-image job of another user submitted while a 300-image job runs (one worker, --concurrency 4)');
  console.log(`alone:           first call ${alone.firstCallS.toFixed(1)} s, done ${alone.doneS.toFixed(1)} s`);
  console.log(`fair share:      first call ${fair.firstCallS.toFixed(1)} s, done ${fair.doneS.toFixed(1)} s (${(fair.doneS / alone.doneS).toFixed(2)}x alone)`);
  console.log(`first come (off): first call ${fifo.firstCallS.toFixed(1)} s, done ${fifo.doneS.toFixed(1)} s (${(fifo.doneS / alone.doneS).toFixed(2)}x alone)`);
}
