/**
 * What every benchmark shares: a pipeline over real parts (PGlite, a folder object
 * store in a temp folder, the real delivery transaction), a funded user with an
 * input attachment, and a runner that drives `runJob` and counts what happened.
 *
 * Nothing here is part of the library; it only wires the library's public pieces
 * the way a host would.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Observable, firstValueFrom, from, map } from 'rxjs';
import sharp from 'sharp';
import { sql } from 'kysely';
import pg from 'pg';
import type { PipelineEvent } from '../src/domain/events.js';
import type { GeneratedImage, GenerationRequest, ImageGenerator } from '../src/domain/ports.js';
import type { JobResult } from '../src/domain/result.js';
import { openDatabase, type Database } from '../src/db/database.js';
import { grantCredits } from '../src/db/ops/grant-credits.js';
import { loadConfig } from '../src/config.js';
import { AdaptiveConcurrencyLimiter } from '../src/engine/adaptive-concurrency-limiter.js';
import { FolderObjectStore } from '../src/sinks/folder-object-store.js';
import { ImageThread } from '../src/adapters/image-thread-link.js';
import { ThreadedWebpCodec } from '../src/adapters/threaded-webp-codec.js';
import { runJob } from '../src/jobs/run-job.js';
import type { RunJobOptions } from '../src/streams/run-job.js';
import { importInputImage } from '../src/jobs/submit-job.js';
import './trace-sql.js';

export interface BenchPipeline {
  readonly database: Database;
  readonly store: FolderObjectStore;
  readonly generator: ImageGenerator;
  readonly limiter: AdaptiveConcurrencyLimiter;
  readonly userId: string;
  readonly inputAttachId: string;
  readonly root: string;
  /** The WebP conversion of deliveries in the image thread (and the store writes there), as `openPipeline` runs them (`IMAGEGEN_IMAGE_THREAD=off`: none, in this thread). */
  readonly codec: ThreadedWebpCodec | undefined;
  close(): Promise<void>;
}

export interface BenchPipelineOptions {
  readonly generator: ImageGenerator;
  /** The process-wide limit (`IMAGEGEN_CONCURRENCY`). */
  readonly globalConcurrency: number;
  /** Credits granted to the benchmark user. */
  readonly credits: number;
  /** `memory`: PGlite in memory (`openDatabase({})`); `disk`: PGlite in a temp data folder, as the CLI runs. */
  readonly database?: 'memory' | 'disk';
  /** A PostgreSQL database to run on instead of PGlite; null: PGlite even when `BENCH_DATABASE_URL` is set. Default: a scratch database on the `BENCH_DATABASE_URL` server, dropped by `close`. */
  readonly databaseUrl?: string | null;
  /**
   * The image thread for the codec and the store's writes (shared with a `ThreadedImageGenerator`, its caller closes it);
   * null: none. Default: one of its own, unless `IMAGEGEN_IMAGE_THREAD=off`, as `openPipeline`.
   */
  readonly imageThread?: ImageThread | null;
}

/** A small real PNG used as every stage's input image (64x64, a gradient). */
export async function inputPng(): Promise<{ bytes: Uint8Array; width: number; height: number }> {
  const width = 64;
  const height = 64;
  const raw = Buffer.alloc(width * height * 3);
  for (let y = 0; y < height; y++)
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * 3;
      raw[i] = x * 4;
      raw[i + 1] = y * 4;
      raw[i + 2] = 128;
    }
  const png = await sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
  return { bytes: new Uint8Array(png), width, height };
}

export async function openBenchPipeline(options: BenchPipelineOptions): Promise<BenchPipeline> {
  const root = await mkdtemp(join(tmpdir(), 'imagegen-bench-'));
  // BENCH_DATABASE_URL: a fresh PostgreSQL database instead of PGlite (its SQL then runs in
  // the server's process, not in ours). Fresh: a reused one holds an earlier run's input
  // attachment, whose object went with that run's folder.
  const server = options.databaseUrl === undefined ? process.env['BENCH_DATABASE_URL'] : undefined;
  const scratch = server ? await scratchPostgres(server) : null;
  const databaseUrl = scratch?.url ?? options.databaseUrl;
  // PGlite starts from the template, as the CLI's does (the user's cache, else the one the build ships): no initdb in the figures.
  // IMAGEGEN_PGLITE_THREAD=off: PGlite in this thread, as `openDatabase({ pgliteThread: false })`.
  const { pgliteTemplateDir, pgliteThread, imageThread: threadSetting } = loadConfig(process.env);
  const ownThread = options.imageThread === undefined && threadSetting !== false ? new ImageThread() : undefined;
  const imageThread = options.imageThread ?? ownThread;
  const database = await openDatabase(
    databaseUrl ? { databaseUrl } : options.database === 'disk' ? { dataDir: join(root, 'db'), pgliteTemplateDir, pgliteThread } : { pgliteTemplateDir, pgliteThread },
  );
  const store = new FolderObjectStore({ root: join(root, 'storage'), writer: imageThread ?? undefined });
  const userId = 'bench-user';
  await grantCredits(database, userId, options.credits);
  const input = await inputPng();
  const inputAttachId = await importInputImage({ database, store }, userId, { ...input, mimeType: 'image/png' });
  return {
    database,
    store,
    generator: options.generator,
    limiter: new AdaptiveConcurrencyLimiter({ max: options.globalConcurrency }),
    userId,
    inputAttachId,
    root,
    codec: imageThread ? new ThreadedWebpCodec(imageThread) : undefined,
    async close() {
      await ownThread?.close();
      // runStoredJob's finalize fires one more lease release after job:finished,
      // without a handle to await; closing PGlite under it spins the process forever
      // (BENCHMARKS.md, "Problem found"). Let it land first: kysely's single PGlite
      // connection is FIFO, so a query queued after it completes after it.
      // BENCH_UNSAFE_CLOSE=1 skips this, to reproduce the hang.
      if (process.env['BENCH_UNSAFE_CLOSE'] !== '1') {
        await new Promise((resolve) => setTimeout(resolve, 50));
        await sql`select 1`.execute(database.db);
      }
      await database.close();
      await scratch?.drop();
      await rm(root, { recursive: true, force: true });
    },
  };
}

/** What one `runJob` run did. */
export interface RunStats {
  readonly result: JobResult;
  /** Subscribe (submit included) to `job:finished`. */
  readonly wallMs: number;
  /** `job:started` to the last `slot:delivered`: the engine's makespan. */
  readonly engineMs: number;
  /** `job:started` to `job:finished` (adds the final flush, ledger release, orphan sweep). */
  readonly startedToFinishedMs: number;
  readonly attemptsStarted: number;
  readonly attemptsFailed: number;
  readonly failedByClass: Readonly<Record<string, number>>;
  readonly delivered: number;
  /** Highest number of attempts in flight at once, seen from the events. */
  readonly maxInFlight: number;
  /** Sum of in-flight attempts over time / makespan: how full the concurrency was on average. */
  readonly meanInFlight: number;
  /** Backoff chosen for replacements (ms), as reported by `attempt:failed`. */
  readonly backoffMs: readonly number[];
  /** Provider-side latency of delivered attempts (generate + deliver), ms. */
  readonly deliveredLatencyMs: readonly number[];
  /** Per attempt: engine clock at `attempt:started` and at its end event (ms, Date.now()). */
  readonly attemptTimes: ReadonlyMap<string, { start: number; end: number; delivered: boolean }>;
}

export interface StageShape {
  readonly quantity: number;
  readonly aspectRatio?: string;
}

/** Runs one job through `runJob` (submit, engine, delivery transactions, progress) and counts its events. */
export function runOurs(pipeline: BenchPipeline, stages: readonly StageShape[], options: RunJobOptions): Promise<RunStats> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let startedAt = 0;
    let lastDeliveredAt = 0;
    let attemptsStarted = 0;
    let attemptsFailed = 0;
    let delivered = 0;
    let inFlight = 0;
    let maxInFlight = 0;
    let area = 0;
    let lastChange = 0;
    const failedByClass: Record<string, number> = {};
    const backoffMs: number[] = [];
    const deliveredLatencyMs: number[] = [];
    const attemptTimes = new Map<string, { start: number; end: number; delivered: boolean }>();
    const endAttempt = (stage: number, slot: number, attempt: number, at: number, ok: boolean) => {
      const times = attemptTimes.get(attemptKey(stage, slot, attempt));
      if (!times) return;
      times.end = at;
      times.delivered = ok;
    };
    const step = (delta: number) => {
      const now = performance.now();
      area += inFlight * (now - lastChange);
      lastChange = now;
      inFlight += delta;
      maxInFlight = Math.max(maxInFlight, inFlight);
    };
    const spec = {
      userId: pipeline.userId,
      productionId: 'bench',
      stages: stages.map((s, i) => ({
        quantity: s.quantity,
        prompt: `benchmark stage ${i}`,
        'aspect-ratio': s.aspectRatio ?? '16:9',
        mergedImageAttachId: pipeline.inputAttachId,
      })),
    };
    const maxQuantity = Math.max(...stages.map((s) => s.quantity));
    // BENCH_WATCH=1: a status line every 5 s (to see where a stuck run stands).
    const watch = process.env['BENCH_WATCH'] === '1'
      ? setInterval(() => {
          console.error(
            `[watch] +${fmt((performance.now() - t0) / 1000, 0)}s delivered ${delivered}, attempts ${attemptsStarted} (failed ${attemptsFailed}), in flight ${inFlight}, global limiter active ${pipeline.limiter.active}/${pipeline.limiter.limit} waiting ${pipeline.limiter.waiting}, rss ${Math.round(process.memoryUsage().rss / 2 ** 20)} MiB`,
          );
        }, 5000)
      : undefined;
    runJob(
      { database: pipeline.database, store: pipeline.store, generator: pipeline.generator, limiter: pipeline.limiter, codec: pipeline.codec },
      { spec, limits: { maxQuantity: Math.max(1000, maxQuantity) } },
      options,
    ).subscribe({
      next: (event: PipelineEvent) => {
        switch (event.type) {
          case 'job:started':
            startedAt = performance.now();
            lastChange = startedAt;
            break;
          case 'attempt:started':
            attemptsStarted++;
            attemptTimes.set(attemptKey(event.stage, event.slot, event.attempt), { start: event.at, end: Number.NaN, delivered: false });
            step(+1);
            break;
          case 'attempt:failed':
            attemptsFailed++;
            failedByClass[event.errorClass] = (failedByClass[event.errorClass] ?? 0) + 1;
            if (event.willRetry) backoffMs.push(event.delayMs);
            endAttempt(event.stage, event.slot, event.attempt, event.at, false);
            step(-1);
            break;
          case 'slot:delivered':
            delivered++;
            deliveredLatencyMs.push(event.latencyMs);
            endAttempt(event.stage, event.slot, event.attempt, event.at, true);
            lastDeliveredAt = performance.now();
            step(-1);
            break;
          case 'job:finished': {
            clearInterval(watch);
            const end = performance.now();
            const engineMs = lastDeliveredAt - startedAt;
            resolve({
              result: event.result,
              wallMs: end - t0,
              engineMs,
              startedToFinishedMs: end - startedAt,
              attemptsStarted,
              attemptsFailed,
              failedByClass,
              delivered,
              maxInFlight,
              meanInFlight: engineMs > 0 ? area / engineMs : 0,
              backoffMs,
              deliveredLatencyMs,
              attemptTimes,
            });
            break;
          }
          default:
            break;
        }
      },
      error: (error: unknown) => {
        clearInterval(watch);
        reject(error);
      },
    });
  });
}

/**
 * An instant provider in-process: answers every call at once (next macrotask) with
 * pre-rendered PNG bytes, cycling through `images`. No HTTP, no JSON: what is left
 * is the pipeline's own cost.
 */
export class InstantImageGenerator implements ImageGenerator {
  calls = 0;
  constructor(private readonly images: readonly Uint8Array[]) {
    if (images.length === 0) throw new RangeError('InstantImageGenerator needs at least one image');
  }
  generate(_request: GenerationRequest): Observable<GeneratedImage> {
    return from(new Promise<void>((resolve) => setImmediate(resolve))).pipe(
      map(() => {
        const bytes = this.images[this.calls++ % this.images.length]!;
        return { bytes, mimeType: 'image/png' };
      }),
    );
  }
}

/**
 * Photo-like PNGs: smooth gradients plus moderate per-pixel noise, so PNG decode and
 * WebP encode cost about what a real generated picture costs (flat test stripes
 * would make sharp look free and overstate every overhead ratio).
 */
export async function photoLikePngs(count: number, width: number, height: number, seed = 1): Promise<Uint8Array[]> {
  const out: Uint8Array[] = [];
  let s = seed >>> 0 || 1;
  const rnd = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 2 ** 32;
  };
  for (let k = 0; k < count; k++) {
    const raw = Buffer.alloc(width * height * 3);
    const fx = 2 + rnd() * 6;
    const fy = 2 + rnd() * 6;
    const phase = rnd() * Math.PI * 2;
    for (let y = 0; y < height; y++)
      for (let x = 0; x < width; x++) {
        const i = (y * width + x) * 3;
        const u = x / width;
        const v = y / height;
        const base = 128 + 90 * Math.sin(fx * u * Math.PI + phase) * Math.cos(fy * v * Math.PI);
        const noise = (rnd() - 0.5) * 24;
        raw[i] = clamp(base + noise);
        raw[i + 1] = clamp(255 * v * 0.8 + 30 + noise);
        raw[i + 2] = clamp(255 - base * 0.7 + noise);
      }
    const png = await sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
    out.push(new Uint8Array(png));
  }
  return out;
}

function clamp(v: number): number {
  return Math.max(0, Math.min(255, Math.round(v)));
}

/** Runs `work` over `items` with at most `concurrency` at once. */
export async function pool<T>(items: readonly T[], concurrency: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lanes = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++;
      await work(items[i]!, i);
    }
  });
  await Promise.all(lanes);
}

export function fmt(n: number, digits = 2): string {
  return n.toFixed(digits);
}

export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * Wraps a generator and records when each attempt's provider call was subscribed and
 * when it answered, so an attempt's time can be split into: before the call
 * (`startAttempt` row, input image), the call, and after it (WebP, upload, delivery
 * transaction).
 */
export class TimedGenerator implements ImageGenerator {
  readonly spans = new Map<string, { start: number; end: number }>();
  constructor(private readonly inner: ImageGenerator) {}
  generate(request: GenerationRequest): Observable<GeneratedImage> {
    const key = attemptKey(request.stageIndex, request.slotIndex, request.attempt);
    return new Observable<GeneratedImage>((subscriber) => {
      const span = { start: Date.now(), end: Number.NaN };
      this.spans.set(key, span);
      return this.inner.generate(request).subscribe({
        next: (v) => {
          span.end = Date.now();
          subscriber.next(v);
        },
        error: (e: unknown) => {
          span.end = Date.now();
          subscriber.error(e);
        },
        complete: () => subscriber.complete(),
      });
    });
  }
}

export function attemptKey(stage: number, slot: number, attempt: number): string {
  return `${stage}/${slot}/${attempt}`;
}

/** `firstValueFrom` re-export so bench files import one module. */
export { firstValueFrom };

/**
 * One file of each thread of this process (`/proc/self/task/<tid>/<file>`), with the thread's
 * kind: `main`, `libvips` (sharp's workers), and every other thread by its name and id
 * (PGlite's thread, libuv's pool and V8's workers are all called `node`). Linux only; none
 * elsewhere. A thread that ends meanwhile is left out.
 */
function* threadFiles(file: 'stat' | 'status'): Generator<{ readonly kind: string; readonly text: string }> {
  let tids: string[];
  try {
    tids = readdirSync('/proc/self/task');
  } catch {
    return;
  }
  for (const tid of tids) {
    let text: string;
    let name: string;
    try {
      text = readFileSync(`/proc/self/task/${tid}/${file}`, 'utf8');
      name = readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim();
    } catch {
      continue; // the thread ended meanwhile
    }
    yield { kind: tid === String(process.pid) ? 'main' : name.startsWith('libvips') ? 'libvips' : `${name}#${tid}`, text };
  }
}

/**
 * CPU time of each thread of this process so far, ms, by kind ({@link threadFiles}). Linux only
 * (`stat`'s utime + stime, 10 ms ticks); an empty map elsewhere.
 */
export function cpuByThread(): Map<string, number> {
  const threads = new Map<string, number>();
  for (const { kind, text } of threadFiles('stat')) {
    const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const ms = (Number(fields[11]) + Number(fields[12])) * 10; // utime + stime, in 10 ms ticks
    threads.set(kind, (threads.get(kind) ?? 0) + ms);
  }
  return threads;
}

/**
 * Context switches of each thread so far, by kind ({@link threadFiles}): voluntary (the thread
 * went to sleep) and involuntary (preempted). Every hand-off between threads is a sleep and a
 * wake-up, which on this PVM guest costs CPU (`bench/thread-wake.ts`), so the count per image
 * prices the hand-offs (BENCHMARKS.md 11L). Linux only.
 */
export function switchesByThread(): Map<string, { voluntary: number; involuntary: number }> {
  const threads = new Map<string, { voluntary: number; involuntary: number }>();
  for (const { kind, text } of threadFiles('status')) {
    const voluntary = Number(/^voluntary_ctxt_switches:\s*(\d+)/m.exec(text)?.[1] ?? 0);
    const involuntary = Number(/^nonvoluntary_ctxt_switches:\s*(\d+)/m.exec(text)?.[1] ?? 0);
    const sum = threads.get(kind) ?? { voluntary: 0, involuntary: 0 };
    threads.set(kind, { voluntary: sum.voluntary + voluntary, involuntary: sum.involuntary + involuntary });
  }
  return threads;
}

/** `after - before` of {@link switchesByThread}, per image: `kind=voluntary/involuntary` words (threads under 0.5 an image left out) and the totals. */
export function switchesPerImage(before: ReturnType<typeof switchesByThread>, after: ReturnType<typeof switchesByThread>, images: number): { readonly words: string; readonly voluntary: number; readonly involuntary: number } {
  let voluntary = 0;
  let involuntary = 0;
  const words: string[] = [];
  for (const [kind, now] of after) {
    const then = before.get(kind) ?? { voluntary: 0, involuntary: 0 };
    const v = (now.voluntary - then.voluntary) / images;
    const i = (now.involuntary - then.involuntary) / images;
    voluntary += v;
    involuntary += i;
    if (v + i >= 0.5) words.push(`${kind}=${fmt(v, 1)}/${fmt(i, 1)}`);
  }
  return { words: words.join(' '), voluntary, involuntary };
}

/** CPU (ms) of every thread but libvips's workers between two {@link cpuByThread} readings: what runs around the codec. */
export function cpuOutsideLibvips(before: Map<string, number>, after: Map<string, number>): number {
  let ms = 0;
  for (const [kind, total] of after) if (kind !== 'libvips') ms += total - (before.get(kind) ?? 0);
  return ms;
}

/** `after - before` of {@link cpuByThread}, per image, as `kind=ms` words (threads under 0.05 ms/image left out). */
export function cpuByThreadPerImage(before: Map<string, number>, after: Map<string, number>, images: number): string {
  return [...after]
    .map(([kind, ms]) => [kind, (ms - (before.get(kind) ?? 0)) / images] as const)
    .filter(([, perImage]) => perImage >= 0.05)
    .map(([kind, perImage]) => `${kind}=${fmt(perImage, 1)}`)
    .join(' ');
}

/** A scratch PostgreSQL database on the server of `url` (a new name per call); `drop` removes it. */
export async function scratchPostgres(url: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `imagegen_bench_${randomBytes(4).toString('hex')}`;
  const run = async (text: string) => {
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      await client.query(text);
    } finally {
      await client.end();
    }
  };
  await run(`create database ${name}`);
  const scratch = new URL(url);
  scratch.pathname = `/${name}`;
  return { url: scratch.toString(), drop: () => run(`drop database if exists ${name} with (force)`) };
}
