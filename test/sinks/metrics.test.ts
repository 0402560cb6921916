/**
 * `PipelineMetrics` fed by real runs (`runStoredJob`: offline generator with injected
 * failures, sharp, folder storage, the delivery transaction), read back through the
 * exposition text a scraper gets, and compared with the job's own summary (`status --json`).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Observable, Subject, filter, firstValueFrom, lastValueFrom, share, take, toArray } from 'rxjs';
import { register as globalRegistry } from 'prom-client';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { jobSummary, type JobSummary } from '../../src/cli/summary.js';
import { grantCredits, jobStats, openDatabase } from '../../src/db/index.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import type { JobFinishedEvent, PipelineEvent } from '../../src/domain/events.js';
import type { ImageGenerator } from '../../src/domain/ports.js';
import { AdaptiveConcurrencyLimiter } from '../../src/engine/adaptive-concurrency-limiter.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { PipelineMetrics } from '../../src/sinks/metrics.js';
import { runStoredJob, type RunJobDeps } from '../../src/streams/run-job.js';
import { createScratchDatabase, forEachDatabase } from '../support/databases.js';
import { failedByClass, parseExposition, sampleOf, seriesOf, type Samples } from '../support/prometheus-text.js';

const FAST = { backoff: { baseMs: 5, maxMs: 20 }, progressIntervalMs: 20, cancelPollMs: 50, stageConcurrency: 3 } as const;
const PRICE = 3;
const USER = 'metrics-user';

/** The metric values that must equal a job's summary (and its attempt statistics). */
function expectMetricsEqualSummary(samples: Samples, summary: JobSummary, retries: { retries: number; retriesDelivered: number }): void {
  expect(sampleOf(samples, 'imagegen_images_delivered_total')).toBe(summary.deliveredImages);
  expect(sampleOf(samples, 'imagegen_attempts_total', { class: 'none', outcome: 'delivered' })).toBe(summary.deliveredImages);
  expect(failedByClass(samples)).toEqual(summary.attempts.byClass);
  expect(sampleOf(samples, 'imagegen_attempts_total', { class: 'cancelled', outcome: 'abandoned' })).toBe(summary.attempts.abandoned);
  const attempts = seriesOf(samples, 'imagegen_attempts_total').reduce((sum, s) => sum + s.value, 0);
  expect(attempts).toBe(summary.attempts.total);
  expect(sampleOf(samples, 'imagegen_retries_total')).toBe(retries.retries);
  expect(sampleOf(samples, 'imagegen_retry_successes_total')).toBe(retries.retriesDelivered);
  // Every attempt here got its provider's answer; every delivery was committed.
  expect(sampleOf(samples, 'imagegen_provider_latency_seconds_count')).toBe(summary.attempts.total);
  expect(sampleOf(samples, 'imagegen_delivery_latency_seconds_count')).toBe(summary.deliveredImages);
  expect(sampleOf(samples, 'imagegen_attempts_in_flight')).toBe(0);
}

/** Two `byClass` tables added class by class. */
function addCounts(a: Readonly<Record<string, number>>, b: Readonly<Record<string, number>>): Record<string, number> {
  const sum: Record<string, number> = { ...a };
  for (const [k, v] of Object.entries(b)) sum[k] = (sum[k] ?? 0) + v;
  return sum;
}

forEachDatabase('PipelineMetrics equal the summary of the jobs it watched run', (ctx) => {
  let root: string;
  let store: FolderObjectStore;
  let inputId: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-metrics-'));
    store = new FolderObjectStore({ root });
    const png = new Uint8Array(await sharp({ create: { width: 64, height: 64, channels: 3, background: '#406080' } }).png().toBuffer());
    inputId = await importInputImage({ database: ctx.database, store }, USER, { bytes: png, mimeType: 'image/png', width: 64, height: 64 });
    await grantCredits(ctx.database, USER, 1000);
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  const submit = (jobId: string, quantities: readonly number[]) =>
    submitSpec({ database: ctx.database, store }, parseJobSpec({ jobId, userId: USER, stages: quantities.map((quantity, i) => ({ quantity, prompt: `p${i}`, mergedImageAttachId: inputId })) }), { pricePerImage: PRICE });

  // Two attempts per slot at most: with 40% of the calls failing, some slots stay empty
  // (the job ends partial and releases credits) and some are filled by their replacement.
  const generator = new OfflineImageGenerator({ latencyMs: 20, failureRate: 0.4, seed: 5, failureClasses: ['overloaded', 'network', 'no_image'] });
  const limiter = new AdaptiveConcurrencyLimiter({ max: 4 });
  let metrics: PipelineMetrics;
  beforeAll(() => {
    metrics = new PipelineMetrics({ database: ctx.database, limiter, cacheMs: 0 });
  });
  const deps = (): RunJobDeps => ({ database: ctx.database, store, generator, limiter, metrics });

  it('after one run: images, attempts by class and outcome, retries, latencies and credits are the summary\'s figures', async () => {
    await submit('metrics-run', [6, 4]);
    const events = await lastValueFrom(runStoredJob(deps(), 'metrics-run', { ...FAST, maxAttemptsPerSlot: 2 }).pipe(toArray()));
    expect((events.at(-1) as JobFinishedEvent).type).toBe('job:finished');
    const summary = await jobSummary(ctx.database, 'metrics-run');
    const stats = await jobStats(ctx.database, { jobId: 'metrics-run' });
    // The run is the interesting kind: short, with replacements that delivered and several classes of failure.
    expect(summary.status).toBe('partial');
    expect(summary.credits.released).toBeGreaterThan(0);
    expect(stats.retriesDelivered).toBeGreaterThan(0);
    expect(Object.keys(summary.attempts.byClass).length).toBeGreaterThanOrEqual(2);

    const text = await metrics.render();
    const samples = parseExposition(text);
    expectMetricsEqualSummary(samples, summary, stats);
    // Credits are the jobs' rows (what the summary reads): this is the only job so far.
    expect(sampleOf(samples, 'imagegen_credits_captured_total')).toBe(summary.credits.captured);
    expect(sampleOf(samples, 'imagegen_credits_released_total')).toBe(summary.credits.released);
    expect(summary.credits.captured).toBe(summary.deliveredImages * PRICE);
    // The offline generator waits 20 ms per call: the provider's part of every attempt.
    expect(sampleOf(samples, 'imagegen_provider_latency_seconds_sum')).toBeGreaterThanOrEqual(summary.attempts.total * 0.015);
    expect(sampleOf(samples, 'imagegen_provider_latency_seconds_bucket', { le: '+Inf' })).toBe(summary.attempts.total);
    expect(sampleOf(samples, 'imagegen_provider_limit')).toBe(limiter.limit);
    expect(sampleOf(samples, 'imagegen_provider_limit_share')).toBe(limiter.limit);
    expect(sampleOf(samples, 'imagegen_jobs', { status: 'partial' })).toBe(1);
    expect(sampleOf(samples, 'imagegen_jobs', { status: 'running' })).toBe(0);
    expect(sampleOf(samples, 'imagegen_queue_depth')).toBe(0);
    // Node's process metrics, in the same private registry, under the same prefix.
    expect(sampleOf(samples, 'imagegen_process_cpu_user_seconds_total')).toBeGreaterThan(0);
    // No job id, user id or attach id ever becomes a label.
    expect(text).not.toContain('metrics-run');
    expect(text).not.toContain(USER);
    expect(text).not.toContain(summary.attachIds[0]);
  });

  it('a second run adds its own figures: the counters are the sums of both summaries', async () => {
    const first = await jobSummary(ctx.database, 'metrics-run');
    await submit('metrics-second', [5]);
    await lastValueFrom(runStoredJob(deps(), 'metrics-second', { ...FAST, maxAttemptsPerSlot: 2 }), { defaultValue: null });
    const second = await jobSummary(ctx.database, 'metrics-second');
    const stats = await jobStats(ctx.database);
    const samples = parseExposition(await metrics.render());
    const both: JobSummary = {
      ...second,
      deliveredImages: first.deliveredImages + second.deliveredImages,
      attempts: {
        total: first.attempts.total + second.attempts.total,
        failed: first.attempts.failed + second.attempts.failed,
        abandoned: first.attempts.abandoned + second.attempts.abandoned,
        byClass: addCounts(first.attempts.byClass, second.attempts.byClass),
      },
    };
    expectMetricsEqualSummary(samples, both, stats);
    expect(sampleOf(samples, 'imagegen_credits_captured_total')).toBe(first.credits.captured + second.credits.captured);
    expect(sampleOf(samples, 'imagegen_credits_released_total')).toBe(first.credits.released + second.credits.released);
    expect(seriesOf(samples, 'imagegen_jobs').reduce((sum, s) => sum + s.value, 0)).toBe(2);
  });

  it('attempts in flight are counted while they run; a stop aborts them as abandoned, as the summary says', async () => {
    await submit('metrics-stop', [4]);
    // Never answers: the attempts stay in flight until the stop's grace (0) aborts them.
    const hanging: ImageGenerator = { generate: () => new Observable(() => {}) };
    const local = new PipelineMetrics({ database: ctx.database, limiter, cacheMs: 0 });
    const stop$ = new Subject<void>();
    const events$ = runStoredJob({ database: ctx.database, store, generator: hanging, limiter, metrics: local }, 'metrics-stop', { ...FAST, stageConcurrency: 2, stop$, graceMs: 0 }).pipe(share());
    const twoStarted = firstValueFrom(events$.pipe(filter((e) => e.type === 'attempt:started'), take(2), toArray()));
    const all = lastValueFrom(events$.pipe(toArray()));
    await twoStarted;
    expect(sampleOf(parseExposition(await local.render()), 'imagegen_attempts_in_flight')).toBe(2);
    stop$.next();
    const events: PipelineEvent[] = await all;
    expect(events.some((e) => e.type === 'job:finished')).toBe(false); // handed back
    const summary = await jobSummary(ctx.database, 'metrics-stop');
    expect(summary.attempts.abandoned).toBe(2);
    const samples = parseExposition(await local.render());
    expect(sampleOf(samples, 'imagegen_attempts_total', { class: 'cancelled', outcome: 'abandoned' })).toBe(2);
    expect(failedByClass(samples)).toEqual({});
    expect(sampleOf(samples, 'imagegen_attempts_in_flight')).toBe(0);
    // Aborted calls never answered: no provider latency observed.
    expect(sampleOf(samples, 'imagegen_provider_latency_seconds_count')).toBe(0);
    expect(sampleOf(samples, 'imagegen_jobs', { status: 'queued' })).toBe(1);
    expect(sampleOf(samples, 'imagegen_queue_depth')).toBe(1);
  });

  it('a run unsubscribed mid-attempt leaves no attempt in flight behind', async () => {
    await submit('metrics-drop', [2]);
    const hanging: ImageGenerator = { generate: () => new Observable(() => {}) };
    const local = new PipelineMetrics({ database: ctx.database, limiter, cacheMs: 0 });
    const events$ = runStoredJob({ database: ctx.database, store, generator: hanging, limiter, metrics: local }, 'metrics-drop', FAST).pipe(share());
    const started = firstValueFrom(events$.pipe(filter((e) => e.type === 'attempt:started'), take(2), toArray()));
    const subscription = events$.subscribe();
    await started;
    expect(sampleOf(parseExposition(await local.render()), 'imagegen_attempts_in_flight')).toBe(2);
    subscription.unsubscribe();
    expect(sampleOf(parseExposition(await local.render()), 'imagegen_attempts_in_flight')).toBe(0);
  });

  it('database figures are reused for cacheMs: a job submitted meanwhile shows only once the cache is stale', async () => {
    const cached = new PipelineMetrics({ database: ctx.database, limiter, cacheMs: 60_000 });
    const fresh = new PipelineMetrics({ database: ctx.database, limiter, cacheMs: 0 });
    const queuedBefore = sampleOf(parseExposition(await cached.render()), 'imagegen_jobs', { status: 'queued' });
    expect(sampleOf(parseExposition(await fresh.render()), 'imagegen_jobs', { status: 'queued' })).toBe(queuedBefore);
    await submit('metrics-cache', [1]);
    expect(sampleOf(parseExposition(await cached.render()), 'imagegen_jobs', { status: 'queued' })).toBe(queuedBefore);
    expect(sampleOf(parseExposition(await fresh.render()), 'imagegen_jobs', { status: 'queued' })).toBe(queuedBefore + 1);
  });
});

describe('PipelineMetrics without an answering database, and beside others', () => {
  it('a scrape whose database read fails still answers: database gauges NaN, credit counters kept, the error counted', async () => {
    const scratch = await createScratchDatabase('pglite');
    const database = await openDatabase(scratch.config);
    const metrics = new PipelineMetrics({ database, limiter: new AdaptiveConcurrencyLimiter({ max: 3 }), cacheMs: 0 });
    try {
      const before = parseExposition(await metrics.render());
      expect(sampleOf(before, 'imagegen_jobs', { status: 'queued' })).toBe(0);
      expect(sampleOf(before, 'imagegen_metrics_database_errors_total')).toBe(0);
    } finally {
      await database.close();
      await scratch.dispose();
    }
    const after = parseExposition(await metrics.render());
    expect(sampleOf(after, 'imagegen_jobs', { status: 'queued' })).toBeNaN();
    expect(sampleOf(after, 'imagegen_queue_depth')).toBeNaN();
    expect(sampleOf(after, 'imagegen_credits_captured_total')).toBe(0);
    expect(sampleOf(after, 'imagegen_metrics_database_errors_total')).toBe(1);
    expect(sampleOf(after, 'imagegen_provider_limit')).toBe(3);
  });

  it('each instance has its own registry: several coexist and prom-client\'s global registry stays empty', async () => {
    const scratch = await createScratchDatabase('pglite');
    const database = await openDatabase(scratch.config);
    try {
      const a = new PipelineMetrics({ database, limiter: { limit: 2 } });
      const b = new PipelineMetrics({ database, limiter: { limit: 5 } });
      // A worker's fleet limiter: its own share, and the fleet's limit it is a share of.
      b.attachLimiter({ limit: 7, share: { sharedLimit: 20 } });
      b.attachQueue(async () => 42);
      const [sa, sb] = [parseExposition(await a.render()), parseExposition(await b.render())];
      expect([sampleOf(sa, 'imagegen_provider_limit'), sampleOf(sb, 'imagegen_provider_limit')]).toEqual([2, 20]);
      expect([sampleOf(sa, 'imagegen_provider_limit_share'), sampleOf(sb, 'imagegen_provider_limit_share')]).toEqual([2, 7]);
      expect([sampleOf(sa, 'imagegen_queue_depth'), sampleOf(sb, 'imagegen_queue_depth')]).toEqual([0, 42]);
      expect(a.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
      expect(await globalRegistry.getMetricsAsJSON()).toEqual([]);
    } finally {
      await database.close();
      await scratch.dispose();
    }
  });
});
