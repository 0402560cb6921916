/**
 * Issue 16, goal 6: the throughput ceiling of one process. The Gemini-protocol server in its
 * own process answers at once (latency 0) with 256x256 or 1024x1024 PNGs; one job of
 * 3 stages x BENCH_QUANTITY runs through `runJob` (the CLI's path: real HTTP, the SDK,
 * base64, WebP, the folder store, the delivery transaction), concurrency BENCH_CONCURRENCY.
 *
 * Reports images delivered per second (engine makespan: `job:started` to the last
 * delivery) and where an image's time goes, as mean wall ms per delivered image (they
 * overlap across the attempts in flight, so they add up to more than 1 / throughput):
 * - provider: the call as the engine sees it (HTTP, JSON, base64 decode);
 * - delivery: from the image to the committed delivery, split into storage (the folder
 *   store's write) and WebP + the delivery transaction (the rest);
 * - WebP alone: the library's `toWebp` on the same PNGs, one at a time, no contention.
 *
 * Run: `npm run bench:build && node dist-bench/bench/throughput.js` (PGlite; with
 * `BENCH_DATABASE_URL=postgres://.../db` also PostgreSQL, a fresh database per size).
 */
import { Observable } from 'rxjs';
import { GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { ImageThread } from '../src/adapters/image-thread-link.js';
import { ThreadedImageGenerator } from '../src/adapters/threaded-image-generator.js';
import { loadConfig } from '../src/config.js';
import { toWebp } from '../src/adapters/image-codec.js';
import type { ObjectStore } from '../src/sinks/object-store.js';
import { spawnFakeServer } from './fake-server-process.js';
import { TimedGenerator, attemptKey, firstValueFrom, fmt, openBenchPipeline, runOurs, scratchPostgres } from './support.js';

const num = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);
const QUANTITY = num('BENCH_QUANTITY', 100);
const CONCURRENCY = num('BENCH_CONCURRENCY', 8);
const SERVER_URL = process.env['BENCH_DATABASE_URL'];

/** The store with each write's wall time recorded. */
class TimedStore implements ObjectStore {
  readonly putMs: number[] = [];
  constructor(private readonly inner: ObjectStore) {}
  put(key: string, body: Uint8Array, contentType: string): Observable<void> {
    return new Observable<void>((subscriber) => {
      const start = performance.now();
      return this.inner.put(key, body, contentType).subscribe({
        next: (v) => subscriber.next(v),
        error: (e: unknown) => subscriber.error(e),
        complete: () => {
          this.putMs.push(performance.now() - start);
          subscriber.complete();
        },
      });
    });
  }
  get(key: string) {
    return this.inner.get(key);
  }
  exists(key: string) {
    return this.inner.exists(key);
  }
  removeIncomplete(prefix: string) {
    return this.inner.removeIncomplete?.(prefix) ?? new Observable<number>((s) => (s.next(0), s.complete()));
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  list(prefix: string) {
    return this.inner.list(prefix);
  }
}

const mean = (values: readonly number[]) => (values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length);

async function measure(size: 256 | 1024, kind: 'pglite' | 'postgres'): Promise<void> {
  const server = await spawnFakeServer({ latencyMs: 0, imageSize: size });
  const database = kind === 'postgres' ? await scratchPostgres(SERVER_URL!) : null;
  const settings = { apiKey: server.apiKey, baseUrl: server.url, timeoutMs: 60_000 };
  // As openPipeline runs it: the adapter, the codec and the store's writes in the image thread, unless IMAGEGEN_IMAGE_THREAD=off.
  const thread = loadConfig(process.env).imageThread !== false ? new ImageThread({ gemini: settings }) : undefined;
  const gemini = thread ? new ThreadedImageGenerator({ thread }) : new GeminiImageGenerator(settings);
  const generator = new TimedGenerator(gemini);
  const pipeline = await openBenchPipeline({ generator, globalConcurrency: CONCURRENCY, credits: 3 * QUANTITY, database: 'disk', databaseUrl: database?.url ?? null, imageThread: thread ?? null });
  const store = new TimedStore(pipeline.store);
  try {
    const stats = await runOurs({ ...pipeline, store: store as unknown as typeof pipeline.store }, [{ quantity: QUANTITY, aspectRatio: '1:1' }, { quantity: QUANTITY, aspectRatio: '1:1' }, { quantity: QUANTITY, aspectRatio: '1:1' }], {
      stageConcurrency: CONCURRENCY,
      attemptTimeoutMs: 60_000,
    });
    const provider: number[] = [];
    const delivery: number[] = [];
    for (const [key, t] of stats.attemptTimes) {
      const span = generator.spans.get(key);
      if (!t.delivered || !span) continue;
      provider.push(span.end - span.start);
      delivery.push(t.end - span.end);
    }
    // WebP alone, uncontended, on PNGs the server sends.
    const samples = await Promise.all([0, 1, 2, 3, 4].map((slot) => firstValueFrom(gemini.generate({ jobId: 'probe', stageIndex: 9, slotIndex: slot, attempt: 1, prompt: 'probe', aspectRatio: '1:1', inputAttachId: null, input: null }))));
    const webp: number[] = [];
    for (let i = 0; i < 20; i++) {
      const start = performance.now();
      await toWebp(samples[i % samples.length]!.bytes);
      webp.push(performance.now() - start);
    }
    const perSecond = stats.delivered / (stats.engineMs / 1000);
    const storage = mean(store.putMs);
    console.log(
      `${size}x${size} ${kind}: ${stats.delivered} images in ${fmt(stats.engineMs / 1000, 2)} s = ${fmt(perSecond, 1)} images/s (concurrency ${CONCURRENCY}); per image (wall, overlapping): provider ${fmt(mean(provider), 1)} ms, delivery ${fmt(mean(delivery), 1)} ms = storage ${fmt(storage, 1)} + WebP and transaction ${fmt(mean(delivery) - storage, 1)}; WebP alone ${fmt(mean(webp), 1)} ms; PNG ${Math.round(samples[0]!.bytes.byteLength / 1024)} KiB`,
    );
  } finally {
    await pipeline.close();
    await thread?.close();
    await server.stop();
    await database?.drop();
  }
}

console.log(`throughput ceiling: 3 x ${QUANTITY} images, provider latency 0 (its own process), concurrency ${CONCURRENCY}`);
if (!SERVER_URL) console.log('PostgreSQL skipped: BENCH_DATABASE_URL not set');
for (const size of [256, 1024] as const) {
  for (const kind of SERVER_URL ? (['pglite', 'postgres'] as const) : (['pglite'] as const)) await measure(size, kind);
}
