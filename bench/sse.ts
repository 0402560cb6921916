/**
 * Issue 13's bench: many Server-Sent Events subscribers to one running job.
 *
 * Starts `imagegen serve --port 0 --with-worker` from the built CLI (`dist/cli.js`) on a
 * scratch PostgreSQL database, the offline generator with latency, then:
 *
 * 1. idle RSS of the server (`/proc/<pid>/status` VmRSS) once it serves and has settled;
 * 2. grants credits and submits one job over HTTP (`POST /v1/jobs`, base64 `inputImageData`);
 * 3. opens `BENCH_SUBSCRIBERS` (200) event streams at once (`GET /v1/jobs/:id/events`,
 *    node:http, one token, frames parsed here) and records when each frame arrived;
 * 4. samples the server's RSS every 100 ms until every stream has ended;
 * 5. checks each subscriber against the job's log read from the database afterwards:
 *    after its snapshot, exactly the followed events of `job_events` numbered above the
 *    snapshot's `id`, in order, none twice, the last `job:finished`, and the snapshot's
 *    delivered count plus the `slot:delivered` frames = every image delivered;
 * 6. delivery latency of each `slot:delivered` that every subscriber got live (numbered
 *    above every snapshot): the latest receipt among subscribers minus the delivery's
 *    `attachments.created_at` (same machine clock). `created_at` is `now()`, the start of
 *    the delivery transaction, so the figure also holds the rest of that transaction
 *    (the job row lock wait, its statements, the commit): an upper bound of commit ->
 *    last subscriber. Also first -> last subscriber spread per event.
 *
 * Then (unless `BENCH_CONTROL=0`) the same job again on a fresh server and database with
 * one subscriber: the RSS the job itself costs, to tell it from what the streams cost.
 *
 * Server settings: `IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN=500` (default 8) and
 * `IMAGEGEN_HTTP_RATE_LIMIT=1000` per minute (default 600): every stream is one token's.
 *
 * Run: `npm run build && npm run bench:build && DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node dist-bench/bench/sse.js`
 * Env: BENCH_SUBSCRIBERS (200), BENCH_STAGES (2), BENCH_QUANTITY (50 per stage),
 * BENCH_LATENCY_MS (100: IMAGEGEN_OFFLINE_LATENCY_MS), BENCH_CONCURRENCY (server default 8),
 * BENCH_CONTROL (1).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import * as http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import sharp from 'sharp';
import { takeSseFrames } from '../test/support/sse-frames.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'cli.js');
const BASE_URL = process.env['DATABASE_URL'];

const SUBSCRIBERS = Number(process.env['BENCH_SUBSCRIBERS'] ?? 200);
const STAGES = Number(process.env['BENCH_STAGES'] ?? 2);
const QUANTITY = Number(process.env['BENCH_QUANTITY'] ?? 50);
const LATENCY_MS = Number(process.env['BENCH_LATENCY_MS'] ?? 100);
const CONCURRENCY = process.env['BENCH_CONCURRENCY'];
const CONTROL = process.env['BENCH_CONTROL'] !== '0';
const MAX_STREAMS = 500;
const RATE_LIMIT = 1000;

const USER = 'bench-user';
const USER_TOKEN = `bench-user-token-${randomBytes(8).toString('hex')}`;
const ADMIN_TOKEN = `bench-admin-token-${randomBytes(8).toString('hex')}`;
/** The events a stream sends after its snapshot (`FOLLOWED_EVENT_TYPES` of src/jobs/follow-job.ts). */
const FOLLOWED = new Set(['attempt:failed', 'slot:delivered', 'stage:completed', 'stage:short', 'job:finished']);

/** Wall clock in ms with sub-ms precision (comparable with PostgreSQL's timestamps on this machine). */
const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}
const ms = (n: number): string => (Number.isNaN(n) ? 'n/a' : `${n.toFixed(1)} ms`);
const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;

async function rssKiB(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(/^\s*(\d+)/.exec(status.split(`\n${name}:`)[1] ?? '')?.[1] ?? NaN);
  return { rss: field('VmRSS'), hwm: field('VmHWM') };
}

async function until(what: string, predicate: () => Promise<boolean> | boolean, timeoutMs = 300_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

interface Server {
  readonly child: ChildProcess;
  readonly url: string;
  stderr(): string;
  readonly exited: Promise<number | null>;
}

/** A scratch database and folder, and `imagegen serve --port 0 --with-worker` on them. */
async function world() {
  const admin = new pg.Client({ connectionString: BASE_URL });
  await admin.connect();
  const name = `imagegen_bench_${randomBytes(5).toString('hex')}`;
  await admin.query(`create database ${name}`);
  const dbUrl = new URL(BASE_URL!);
  dbUrl.pathname = `/${name}`;
  const dir = await mkdtemp(join(tmpdir(), 'imagegen-sse-bench-'));
  const db = new pg.Client({ connectionString: dbUrl.toString() });
  await db.connect();
  let server: Server | undefined;
  return {
    async serve(): Promise<Server> {
      const env: NodeJS.ProcessEnv = {
        PATH: process.env['PATH'],
        HOME: process.env['HOME'],
        DATABASE_URL: dbUrl.toString(),
        IMAGEGEN_DATA_DIR: join(dir, 'data'),
        IMAGEGEN_PROVIDER: 'offline',
        IMAGEGEN_OFFLINE_LATENCY_MS: String(LATENCY_MS),
        IMAGEGEN_API_TOKENS: `${USER_TOKEN}=${USER}`,
        IMAGEGEN_ADMIN_TOKENS: ADMIN_TOKEN,
        IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN: String(MAX_STREAMS),
        IMAGEGEN_HTTP_RATE_LIMIT: String(RATE_LIMIT),
        IMAGEGEN_LOG_LEVEL: 'info',
        ...(CONCURRENCY ? { IMAGEGEN_CONCURRENCY: CONCURRENCY } : {}),
      };
      const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--with-worker'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      child.stdout!.resume();
      const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
      let url: string | undefined;
      let gone = false;
      void exited.then(() => (gone = true));
      await until('serve to log `serving`', () => {
        if (gone) throw new Error(`imagegen serve exited before serving:\n${err}`);
        for (const line of err.split('\n')) {
          if (!line.startsWith('{')) continue;
          const entry = JSON.parse(line) as { msg?: string; url?: string };
          if (entry.msg === 'serving') url = entry.url;
        }
        return url !== undefined;
      }, 60_000);
      server = { child, url: url!, stderr: () => err, exited };
      return server;
    },
    async query<T extends pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<T[]> {
      return (await db.query<T>(text, values)).rows;
    },
    /** Transactions committed in the scratch database so far (a backend reports its counts at exit at the latest). */
    async transactions(): Promise<number> {
      const { rows } = await admin.query<{ n: string }>(`select xact_commit as n from pg_stat_database where datname = $1`, [name]);
      return Number(rows[0]?.n ?? NaN);
    },
    async stopServer(): Promise<void> {
      if (server && server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGTERM');
      if (server) await server.exited;
    },
    async close(): Promise<void> {
      await this.stopServer();
      await db.end().catch(() => undefined);
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

async function call(url: string, token: string, method: string, path: string, body?: unknown): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`${url}${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text.startsWith('{') ? JSON.parse(text) : text };
}

interface Frame {
  readonly event: string;
  readonly id: number | null;
  /** When the chunk holding the frame's end arrived (ms, wall clock). */
  readonly at: number;
  readonly stage?: number;
  readonly slot?: number;
  readonly delivered?: number;
}

interface Subscriber {
  status: number;
  headersAt: number;
  frames: Frame[];
  comments: number;
  ended: boolean;
  error?: string;
}

/** One event stream over node:http; frames are parsed here, each stamped with its chunk's arrival. */
function subscribe(base: string, jobId: string, agent: http.Agent): { sub: Subscriber; done: Promise<void> } {
  const sub: Subscriber = { status: 0, headersAt: 0, frames: [], comments: 0, ended: false };
  const done = new Promise<void>((resolveDone) => {
    const request = http.get(`${base}/v1/jobs/${jobId}/events`, { agent, headers: { authorization: `Bearer ${USER_TOKEN}`, accept: 'text/event-stream' } }, (response) => {
      sub.status = response.statusCode ?? 0;
      sub.headersAt = now();
      response.setEncoding('utf8');
      let buffer = '';
      response.on('data', (chunk: string) => {
        const at = now();
        const taken = takeSseFrames(buffer + chunk);
        buffer = taken.rest;
        sub.comments += taken.comments;
        for (const { event, id, data: text } of taken.frames) {
          if (event === 'slot:delivered') {
            const data = JSON.parse(text ?? 'null') as { stage: number; slot: number };
            sub.frames.push({ event, id, at, stage: data.stage, slot: data.slot });
          } else if (event === 'snapshot') {
            const data = JSON.parse(text ?? 'null') as { deliveredImages: number };
            sub.frames.push({ event, id, at, delivered: data.deliveredImages });
          } else sub.frames.push({ event, id, at });
        }
      });
      response.on('end', () => {
        sub.ended = true;
        resolveDone();
      });
      response.on('error', (error) => {
        sub.error = String(error);
        resolveDone();
      });
    });
    request.on('error', (error) => {
      sub.error = String(error);
      resolveDone();
    });
  });
  return { sub, done };
}

interface RunResult {
  readonly subscribers: number;
  readonly idleKiB: number;
  readonly peakKiB: number;
  readonly hwmBeforeKiB: number;
  readonly hwmAfterKiB: number;
  readonly afterKiB: number;
  readonly jobSeconds: number;
  readonly delivered: number;
  readonly total: number;
  readonly status: string;
  readonly problems: string[];
  readonly eventsPerSubscriber: number[];
  readonly snapshotSeqs: number[];
  readonly connectMs: number;
  readonly latency: number[];
  readonly firstLatency: number[];
  readonly spread: number[];
  readonly measuredSlots: number;
  readonly warnings: string[];
  readonly transactions: number;
}

async function run(subscribers: number): Promise<RunResult> {
  const w = await world();
  try {
    const server = await w.serve();
    const pid = server.child.pid!;
    await until('readyz', async () => (await fetch(`${server.url}/readyz`).catch(() => null))?.status === 200, 60_000);
    // Idle: serving, the worker polling an empty queue; let start-up garbage settle first.
    await sleep(3000);
    const idleSamples: number[] = [];
    for (let i = 0; i < 10; i++) {
      idleSamples.push((await rssKiB(pid)).rss);
      await sleep(100);
    }
    const idleKiB = percentile(idleSamples, 50);
    const hwmBeforeKiB = (await rssKiB(pid)).hwm;
    const transactionsBefore = await w.transactions();

    const total = STAGES * QUANTITY;
    const granted = await call(server.url, ADMIN_TOKEN, 'POST', `/v1/credits/${USER}`, { amount: total });
    if (granted.status !== 200 && granted.status !== 201) throw new Error(`credits grant: ${granted.status} ${JSON.stringify(granted.body)}`);
    const png = await sharp({ create: { width: 32, height: 18, channels: 3, background: '#6a8caf' } }).png().toBuffer();
    const jobId = `sse-bench-${randomBytes(4).toString('hex')}`;
    const stages = Array.from({ length: STAGES }, (_, i) => ({ prompt: `sse bench stage ${i}`, quantity: QUANTITY, 'aspect-ratio': '1:1', inputImageData: png.toString('base64') }));

    let peakKiB = idleKiB;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const { rss } = await rssKiB(pid).catch(() => ({ rss: 0 }));
        peakKiB = Math.max(peakKiB, rss);
        await sleep(100);
      }
    })();

    const submitted = await call(server.url, USER_TOKEN, 'POST', '/v1/jobs', { jobId, stages });
    if (submitted.status !== 201) throw new Error(`submit: ${submitted.status} ${JSON.stringify(submitted.body)}`);
    const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
    const openedAt = now();
    const streams = Array.from({ length: subscribers }, () => subscribe(server.url, jobId, agent));
    await Promise.race([Promise.all(streams.map((s) => s.done)), sleep(300_000)]);
    const lastHeaders = Math.max(...streams.map((s) => s.sub.headersAt));
    sampling = false;
    await sampler;
    agent.destroy();
    const { rss: afterKiB, hwm: hwmAfterKiB } = await rssKiB(pid);
    // The server's backends report their last counts when they exit.
    await w.stopServer();
    await sleep(500);
    const transactions = (await w.transactions()) - transactionsBefore;

    // The job's log and deliveries, as committed.
    const [job] = await w.query<{ status: string; delivered: number; total: number; started: number; finished: number }>(
      `select status, delivered, total, extract(epoch from created_at) * 1000 as started, extract(epoch from finished_at) * 1000 as finished from jobs where id = $1`,
      [jobId],
    );
    const log = await w.query<{ seq: number; type: string }>(`select seq, type from job_events where job_id = $1 order by seq`, [jobId]);
    const deliveries = await w.query<{ stage_index: number; slot_index: number; at: number }>(
      `select stage_index, slot_index, extract(epoch from created_at) * 1000 as at from attachments where job_id = $1`,
      [jobId],
    );
    const commitAt = new Map(deliveries.map((d) => [`${d.stage_index}/${d.slot_index}`, Number(d.at)]));
    const seqOfSlot = new Map<string, number>();

    const problems: string[] = [];
    const eventsPerSubscriber: number[] = [];
    const snapshotSeqs: number[] = [];
    streams.forEach(({ sub }, i) => {
      const fail = (what: string) => problems.push(`subscriber ${i}: ${what}`);
      if (sub.status !== 200) return fail(`status ${sub.status}${sub.error ? ` (${sub.error})` : ''}`);
      if (sub.error) fail(`stream error ${sub.error}`);
      if (!sub.ended) fail('stream did not end');
      const [snapshot, ...events] = sub.frames;
      if (snapshot?.event !== 'snapshot' || snapshot.id === null) return fail(`first frame ${snapshot?.event ?? 'none'}, not a snapshot`);
      snapshotSeqs.push(snapshot.id);
      eventsPerSubscriber.push(events.length);
      const expected = log.filter((e) => e.seq > snapshot.id! && FOLLOWED.has(e.type));
      const got = events.map((e) => `${e.id}:${e.event}`).join(',');
      const want = expected.map((e) => `${e.seq}:${e.type}`).join(',');
      if (got !== want) {
        const ids = events.map((e) => e.id);
        const dups = ids.filter((id, k) => ids.indexOf(id) !== k).length;
        const missing = expected.filter((e) => !ids.includes(e.seq)).length;
        fail(`events differ from the log: ${events.length} received, ${expected.length} expected, ${missing} missing, ${dups} duplicates`);
      }
      if (events.at(-1)?.event !== 'job:finished') fail(`last event ${events.at(-1)?.event ?? 'none'}, not job:finished`);
      const slots = events.filter((e) => e.event === 'slot:delivered').length;
      if ((snapshot.delivered ?? 0) + slots !== job!.delivered) fail(`snapshot delivered ${snapshot.delivered} + ${slots} slot:delivered != ${job!.delivered}`);
      for (const e of events) if (e.event === 'slot:delivered') seqOfSlot.set(`${e.stage}/${e.slot}`, e.id!);
    });

    // Latency of each delivery that every subscriber received live (numbered above every snapshot).
    const live = Math.max(...snapshotSeqs);
    const receipts = new Map<string, number[]>();
    for (const { sub } of streams) {
      for (const f of sub.frames) {
        if (f.event !== 'slot:delivered' || f.id === null || f.id <= live) continue;
        const key = `${f.stage}/${f.slot}`;
        let list = receipts.get(key);
        if (!list) receipts.set(key, (list = []));
        list.push(f.at);
      }
    }
    const latency: number[] = [];
    const firstLatency: number[] = [];
    const spread: number[] = [];
    for (const [key, list] of receipts) {
      const committed = commitAt.get(key);
      if (committed === undefined) {
        problems.push(`slot ${key}: received but no attachment row`);
        continue;
      }
      if (list.length !== streams.length) problems.push(`slot ${key}: ${list.length} of ${streams.length} subscribers received it`);
      const last = Math.max(...list);
      const first = Math.min(...list);
      latency.push(last - committed);
      firstLatency.push(first - committed);
      spread.push(last - first);
    }

    const warnings = server
      .stderr()
      .split('\n')
      .filter((line) => /"level":(40|50|60)/.test(line))
      .map((line) => line.slice(0, 300));
    return {
      subscribers,
      idleKiB,
      peakKiB,
      hwmBeforeKiB,
      hwmAfterKiB,
      afterKiB,
      jobSeconds: (Number(job!.finished) - Number(job!.started)) / 1000,
      delivered: job!.delivered,
      total: job!.total,
      status: job!.status,
      problems,
      eventsPerSubscriber,
      snapshotSeqs,
      connectMs: lastHeaders - openedAt,
      latency,
      firstLatency,
      spread,
      measuredSlots: receipts.size,
      warnings,
      transactions,
    };
  } finally {
    await w.close();
  }
}

function report(r: RunResult): void {
  const min = Math.min(...r.eventsPerSubscriber);
  const max = Math.max(...r.eventsPerSubscriber);
  console.log(`job: ${STAGES} stages x ${QUANTITY} images, offline generator ${LATENCY_MS} ms per image, ${r.status} ${r.delivered}/${r.total}, ${r.jobSeconds.toFixed(1)} s from submit to finished`);
  console.log(`subscribers: ${r.subscribers} (one token; server IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN=${MAX_STREAMS}, IMAGEGEN_HTTP_RATE_LIMIT=${RATE_LIMIT}/min), all headers ${ms(r.connectMs)} after opening`);
  console.log(`snapshot ids: ${Math.min(...r.snapshotSeqs)}..${Math.max(...r.snapshotSeqs)}; events per subscriber after the snapshot: ${min === max ? min : `${min}..${max}`}`);
  console.log(`all complete (the log's events after the snapshot, in order, none missing or twice, ending job:finished): ${r.problems.length === 0 ? 'yes' : `NO (${r.problems.length} problems)`}`);
  for (const p of r.problems.slice(0, 20)) console.log(`  ${p}`);
  console.log(`server RSS: idle ${mib(r.idleKiB)}, peak ${mib(r.peakKiB)} (sampled every 100 ms), after ${mib(r.afterKiB)}; ratio peak/idle ${(r.peakKiB / r.idleKiB).toFixed(2)} (goal < 2)`);
  console.log(`  VmHWM ${mib(r.hwmBeforeKiB)} before the submit, ${mib(r.hwmAfterKiB)} after the job`);
  console.log(
    `delivery latency, attachments.created_at -> last subscriber, ${r.measuredSlots} slot:delivered every subscriber got live: p50 ${ms(percentile(r.latency, 50))}, p99 ${ms(percentile(r.latency, 99))}, max ${ms(Math.max(...r.latency))}`,
  );
  console.log(`  -> first subscriber: p50 ${ms(percentile(r.firstLatency, 50))}, p99 ${ms(percentile(r.firstLatency, 99))}; spread first -> last subscriber: p50 ${ms(percentile(r.spread, 50))}, p99 ${ms(percentile(r.spread, 99))}, max ${ms(Math.max(...r.spread))}`);
  console.log(`database transactions committed from the submit to the server's exit: ${r.transactions} (${(r.transactions / r.total).toFixed(0)} per image)`);
  if (r.warnings.length > 0) {
    console.log(`server warnings/errors: ${r.warnings.length}`);
    for (const line of r.warnings.slice(0, 5)) console.log(`  ${line}`);
  }
}

if (!BASE_URL) {
  console.error('bench/sse needs PostgreSQL: set DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/postgres)');
  process.exit(2);
}
if (!existsSync(CLI)) {
  console.error(`build the CLI first (npm run build): ${CLI} is missing`);
  process.exit(2);
}
console.log(`${SUBSCRIBERS} SSE subscribers to one running job (imagegen serve --with-worker, PostgreSQL)`);
const main = await run(SUBSCRIBERS);
report(main);
if (CONTROL) {
  console.log('\ncontrol: the same job, 1 subscriber (fresh server and database)');
  report(await run(1));
}
process.exit(main.problems.length === 0 ? 0 : 1);
