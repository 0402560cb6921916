/**
 * Figures 1 and 5 (latency-bound run).
 *
 * 3 stages x 100 images against the local Gemini-protocol server (latency 300 ms,
 * 10% of calls fail with a transient 5xx), global concurrency 10, stage concurrency
 * 10, backoff base 50 ms. Reports the makespan against the ideal bound
 * `ceil(expected calls / concurrency) x latency`, and provider calls per delivered
 * image against `1/(1-p)`.
 *
 * Env: BENCH_LATENCY_MS (300), BENCH_FAILURE_RATE (0.1), BENCH_CONCURRENCY (10),
 * BENCH_STAGE_CONCURRENCY (= concurrency), BENCH_BACKOFF_BASE_MS (50),
 * BENCH_QUANTITY (100), BENCH_STAGES (3), BENCH_SEED (7), BENCH_FAILURE_MIX (5xx | default).
 */
import { failureMixFromEnv, serverCounts, startProvider } from './gemini-fixture.js';
import { of } from 'rxjs';
import { runEngine } from '../src/streams/engine.js';
import type { JobFinishedEvent } from '../src/domain/events.js';
import { TimedGenerator, attemptKey, fmt, inputPng, openBenchPipeline, percentile, runOurs } from './support.js';

const num = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);

export interface MakespanSettings {
  readonly latencyMs: number;
  readonly failureRate: number;
  readonly concurrency: number;
  readonly stageConcurrency: number;
  readonly backoffBaseMs: number;
  readonly quantity: number;
  readonly stages: number;
  readonly seed: number;
}

export function settingsFromEnv(): MakespanSettings {
  const concurrency = num('BENCH_CONCURRENCY', 10);
  return {
    latencyMs: num('BENCH_LATENCY_MS', 300),
    failureRate: num('BENCH_FAILURE_RATE', 0.1),
    concurrency,
    stageConcurrency: num('BENCH_STAGE_CONCURRENCY', concurrency),
    backoffBaseMs: num('BENCH_BACKOFF_BASE_MS', 50),
    quantity: num('BENCH_QUANTITY', 100),
    stages: num('BENCH_STAGES', 3),
    seed: num('BENCH_SEED', 7),
  };
}

/** Runs our engine once on the settings; returns the measured figures. */
export async function measureOurs(s: MakespanSettings) {
  const { server, generator: gemini } = await startProvider({ latencyMs: s.latencyMs, failureRate: s.failureRate, seed: s.seed, classes: failureMixFromEnv() });
  const generator = new TimedGenerator(gemini);
  const total = s.stages * s.quantity;
  const pipeline = await openBenchPipeline({ generator, globalConcurrency: s.concurrency, credits: total });
  try {
    const stats = await runOurs(
      pipeline,
      Array.from({ length: s.stages }, () => ({ quantity: s.quantity })),
      {
        stageConcurrency: s.stageConcurrency,
        backoff: { baseMs: s.backoffBaseMs, maxMs: 2000 },
        maxAttemptsPerSlot: 10,
        attemptTimeoutMs: 30_000,
      },
    );
    const counts = serverCounts(server);
    const expectedCalls = total / (1 - s.failureRate);
    const idealMs = Math.ceil(expectedCalls / s.concurrency) * s.latencyMs;
    const idealRealizedMs = Math.ceil(counts.calls / s.concurrency) * s.latencyMs;
    const realizedP = counts.failures / counts.calls;
    // Where an attempt's permit time goes: before the provider call, the call, after it.
    const pre: number[] = [];
    const call: number[] = [];
    const post: number[] = [];
    const held: number[] = [];
    for (const [key, t] of stats.attemptTimes) {
      const span = generator.spans.get(key);
      held.push(t.end - t.start);
      if (!span) continue;
      pre.push(span.start - t.start);
      call.push(span.end - span.start);
      if (t.delivered) post.push(t.end - span.end);
    }
    const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : 0);
    const heldSum = held.reduce((a, b) => a + b, 0);
    return {
      breakdown: {
        preMean: mean(pre),
        preP95: percentile(pre, 95),
        callMean: mean(call),
        callP95: percentile(call, 95),
        postMean: mean(post),
        postP95: percentile(post, 95),
        heldMean: mean(held),
        /** sum of permit time / concurrency: the makespan if the permits were always full. */
        packedMs: heldSum / s.concurrency,
      },
      settings: s,
      status: stats.result.status,
      delivered: stats.result.deliveredImages,
      total,
      perStage: stats.result.stages.map((st) => `${st.delivered}/${st.quantity}`),
      calls: counts.calls,
      failures: counts.failures,
      attemptsStarted: stats.attemptsStarted,
      failedByClass: stats.failedByClass,
      realizedP,
      expectedCalls,
      idealMs,
      idealRealizedMs,
      engineMs: stats.engineMs,
      startedToFinishedMs: stats.startedToFinishedMs,
      wallMs: stats.wallMs,
      makespanRatio: stats.wallMs / idealMs,
      engineRatio: stats.engineMs / idealMs,
      realizedRatio: stats.wallMs / idealRealizedMs,
      callsPerImage: counts.calls / stats.result.deliveredImages,
      callsPerImageVsNominal: counts.calls / stats.result.deliveredImages / (1 / (1 - s.failureRate)),
      callsPerImageVsRealized: counts.calls / stats.result.deliveredImages / (1 / (1 - realizedP)),
      maxInFlightServer: server.maxObservedInFlight(),
      maxInFlightEvents: stats.maxInFlight,
      meanInFlight: stats.meanInFlight,
      attemptLatencyP50: percentile(stats.deliveredLatencyMs, 50),
      attemptLatencyP95: percentile(stats.deliveredLatencyMs, 95),
      attemptLatencyMax: percentile(stats.deliveredLatencyMs, 100),
      backoffMean: stats.backoffMs.length ? stats.backoffMs.reduce((a, b) => a + b, 0) / stats.backoffMs.length : 0,
    };
  } finally {
    await pipeline.close();
    await server.close();
  }
}

export function printOurs(m: Awaited<ReturnType<typeof measureOurs>>): void {
  const s = m.settings;
  console.log(`ours: ${s.stages} stages x ${s.quantity}, latency ${s.latencyMs} ms, p=${s.failureRate}, global ${s.concurrency}, stage ${s.stageConcurrency}, backoff base ${s.backoffBaseMs} ms`);
  console.log(`  status ${m.status}, delivered ${m.delivered}/${m.total} (${m.perStage.join(', ')})`);
  console.log(`  provider calls ${m.calls} (failed ${m.failures}, realized p=${fmt(m.realizedP, 4)}), failures by class ${JSON.stringify(m.failedByClass)}`);
  console.log(`  ideal ceil(${fmt(m.expectedCalls, 1)}/${s.concurrency}) x ${s.latencyMs} = ${m.idealMs} ms; with the realized calls ceil(${m.calls}/${s.concurrency}) x ${s.latencyMs} = ${m.idealRealizedMs} ms`);
  console.log(`  makespan subscribe->job:finished ${fmt(m.wallMs, 0)} ms, job:started->last delivery ${fmt(m.engineMs, 0)} ms, job:started->job:finished ${fmt(m.startedToFinishedMs, 0)} ms`);
  console.log(`  FIGURE 1 makespan / ideal = ${fmt(m.makespanRatio, 3)} (engine only ${fmt(m.engineRatio, 3)}; vs realized-calls ideal ${fmt(m.realizedRatio, 3)})`);
  console.log(`  concurrency: max in flight ${m.maxInFlightEvents} (server saw ${m.maxInFlightServer}), mean in flight ${fmt(m.meanInFlight, 2)} of ${s.concurrency}`);
  console.log(`  delivered attempt latency (generate+deliver) p50 ${fmt(m.attemptLatencyP50, 0)} p95 ${fmt(m.attemptLatencyP95, 0)} max ${fmt(m.attemptLatencyMax, 0)} ms; mean backoff ${fmt(m.backoffMean, 0)} ms`);
  const b = m.breakdown;
  console.log(`  per attempt (permit held ${fmt(b.heldMean, 0)} ms mean): before the call ${fmt(b.preMean, 1)} ms (p95 ${fmt(b.preP95, 0)}), provider call ${fmt(b.callMean, 1)} ms (p95 ${fmt(b.callP95, 0)}), after it (WebP+upload+delivery txn) ${fmt(b.postMean, 1)} ms (p95 ${fmt(b.postP95, 0)})`);
  console.log(`  sum(permit time)/concurrency = ${fmt(b.packedMs, 0)} ms = ${fmt(b.packedMs / m.idealMs, 3)} x ideal: the rest of the makespan is the tail (${fmt(m.wallMs - b.packedMs, 0)} ms)`);
  console.log(`  FIGURE 5 calls per delivered image ${fmt(m.callsPerImage, 4)} vs 1/(1-p)=${fmt(1 / (1 - s.failureRate), 4)}: ratio ${fmt(m.callsPerImageVsNominal, 4)} (vs realized p: ${fmt(m.callsPerImageVsRealized, 4)})`);
}

/**
 * Diagnostic: the engine alone (`runEngine`) with the same provider and a delivery
 * that costs nothing (no WebP, no upload, no database). What is left is scheduling:
 * permits, backoff, the tail.
 */
export async function measureEngineOnly(s: MakespanSettings) {
  const { server, generator } = await startProvider({ latencyMs: s.latencyMs, failureRate: s.failureRate, seed: s.seed, classes: failureMixFromEnv() });
  try {
    const png = await inputPng();
    const input = { bytes: png.bytes, mimeType: 'image/png' };
    const stages = Array.from({ length: s.stages }, (_, index) => ({
      index,
      prompt: `benchmark stage ${index}`,
      aspectRatio: '16:9' as const,
      quantity: s.quantity,
      inputAttachId: 'input',
      inputImage: null,
    }));
    let n = 0;
    const t0 = performance.now();
    const finished = await new Promise<JobFinishedEvent>((resolve, reject) =>
      runEngine(
        { jobId: 'engine-only', stages },
        { generate: (request) => generator.generate({ ...request, input }), deliver: () => of({ attachId: `a${n++}`, duplicate: false }) },
        { stageConcurrency: s.stageConcurrency, globalConcurrency: s.concurrency, backoff: { baseMs: s.backoffBaseMs, maxMs: 2000 }, maxAttemptsPerSlot: 10, attemptTimeoutMs: 30_000 },
      ).subscribe({ next: (e) => e.type === 'job:finished' && resolve(e), error: reject }),
    );
    const wallMs = performance.now() - t0;
    const calls = server.calls();
    const idealMs = Math.ceil(s.stages * s.quantity / (1 - s.failureRate) / s.concurrency) * s.latencyMs;
    return { status: finished.status, delivered: finished.result.deliveredImages, calls, wallMs, idealMs, ratio: wallMs / idealMs, realizedRatio: wallMs / (Math.ceil(calls / s.concurrency) * s.latencyMs) };
  } finally {
    await server.close();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const settings = settingsFromEnv();
  const m = await measureOurs(settings);
  printOurs(m);
  console.log(`JSON ${JSON.stringify(m)}`);
  if (process.env['BENCH_ENGINE_ONLY'] !== '0') {
    const e = await measureEngineOnly(settings);
    console.log(`diagnostic, engine alone (same provider, free delivery): ${e.status} ${e.delivered}, ${e.calls} calls, ${fmt(e.wallMs, 0)} ms = ${fmt(e.ratio, 3)} x ideal (${fmt(e.realizedRatio, 3)} x realized-calls ideal)`);
  }
}
