/**
 * Figure 4: peak RSS for 100 vs 10,000 images.
 *
 * Each size runs in a fresh child process (`node dist-bench/bench/rss.js child <images>`),
 * so the runs share no heap; the child reports `process.resourceUsage().maxRSS` and the
 * highest `heapUsed` / `external` / `arrayBuffers` seen (sampled every 100 ms).
 * Provider: the local Gemini-protocol server in its own process (not measured),
 * latency 0, small images (64 px long side, 16:9). Job: 10 stages, images/10 each;
 * global concurrency 8, stage concurrency 4 (the defaults).
 * Database: PGlite in a temp data folder, as the CLI runs (BENCH_DB=memory for an
 * in-memory PGlite, whose data lives in the WASM heap and so grows with the job).
 * Env: BENCH_SIZES (100,10000), BENCH_DB (disk | memory).
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { runJob } from '../src/jobs/run-job.js';
import { spawnFakeServer } from './fake-server-process.js';
import { fmt, openBenchPipeline } from './support.js';

const STAGES = 10;

async function child(images: number): Promise<void> {
  const server = await spawnFakeServer({ latencyMs: 0, imageSize: 64 });
  const generator = new GeminiImageGenerator({ apiKey: server.apiKey, baseUrl: server.url, timeoutMs: 60_000 });
  const pipeline = await openBenchPipeline({
    generator,
    globalConcurrency: 8,
    credits: images,
    database: process.env['BENCH_DB'] === 'memory' ? 'memory' : 'disk',
  });
  const peak = { heapUsed: 0, external: 0, arrayBuffers: 0, rss: 0 };
  const sample = () => {
    const m = process.memoryUsage();
    peak.heapUsed = Math.max(peak.heapUsed, m.heapUsed);
    peak.external = Math.max(peak.external, m.external);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
    peak.rss = Math.max(peak.rss, m.rss);
  };
  const sampler = setInterval(sample, 100);
  const rssBeforeJob = process.memoryUsage().rss;
  const t0 = performance.now();
  const perStage = images / STAGES;
  const spec = {
    userId: pipeline.userId,
    stages: Array.from({ length: STAGES }, (_, i) => ({ quantity: perStage, prompt: `rss stage ${i}`, mergedImageAttachId: pipeline.inputAttachId })),
  };
  // A lean subscriber: counts only, so the harness keeps nothing per image.
  let delivered = 0;
  let status = '';
  await new Promise<void>((resolve, reject) =>
    runJob(pipeline, { spec, limits: { maxQuantity: Math.max(1000, perStage) } }, {}).subscribe({
      next: (event) => {
        if (event.type === 'slot:delivered') delivered++;
        if (event.type === 'job:finished') status = event.status;
      },
      error: reject,
      complete: resolve,
    }),
  );
  const wallMs = performance.now() - t0;
  sample();
  clearInterval(sampler);
  // Heap still reachable after the job (run with --expose-gc): retained vs. garbage.
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const heapAfterGcKiB = Math.round(process.memoryUsage().heapUsed / 1024);
  const calls = await server.stop();
  await pipeline.close();
  const out = {
    images,
    delivered,
    status,
    calls,
    wallMs,
    maxRssKiB: process.resourceUsage().maxRSS,
    rssBeforeJobKiB: Math.round(rssBeforeJob / 1024),
    peakHeapUsedKiB: Math.round(peak.heapUsed / 1024),
    peakExternalKiB: Math.round(peak.external / 1024),
    peakArrayBuffersKiB: Math.round(peak.arrayBuffers / 1024),
    heapAfterGcKiB,
  };
  process.stdout.write(`RESULT ${JSON.stringify(out)}\n`);
}

type ChildResult = {
  images: number;
  delivered: number;
  status: string;
  calls: number;
  wallMs: number;
  maxRssKiB: number;
  rssBeforeJobKiB: number;
  peakHeapUsedKiB: number;
  peakExternalKiB: number;
  peakArrayBuffersKiB: number;
  heapAfterGcKiB: number;
};

function runChild(images: number): Promise<ChildResult> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, ['--expose-gc', fileURLToPath(import.meta.url), 'child', String(images)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    proc.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    proc.once('error', reject);
    proc.once('exit', (code) => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (code !== 0 || !line) reject(new Error(`child for ${images} images exited with ${code}: ${out}`));
      else resolve(JSON.parse(line.slice('RESULT '.length)) as ChildResult);
    });
  });
}

const mib = (kib: number) => fmt(kib / 1024, 1);

if (process.argv[2] === 'child') {
  await child(Number(process.argv[3]));
} else if (import.meta.url === `file://${process.argv[1]}`) {
  const sizes = (process.env['BENCH_SIZES'] ?? '100,10000').split(',').map(Number);
  console.log(`peak RSS: ${STAGES} stages, Gemini-protocol server in its own process (latency 0, 64 px images), global 8 / stage 4, PGlite ${process.env['BENCH_DB'] === 'memory' ? 'in memory' : 'in a temp data folder'}`);
  const results: ChildResult[] = [];
  for (const images of sizes) {
    const r = await runChild(images);
    results.push(r);
    console.log(
      `  ${r.images} images: ${r.status} ${r.delivered}, ${r.calls} calls, ${fmt(r.wallMs / 1000, 1)} s; max RSS ${mib(r.maxRssKiB)} MiB (before the job ${mib(r.rssBeforeJobKiB)} MiB); ` +
        `peak heapUsed ${mib(r.peakHeapUsedKiB)} MiB, external ${mib(r.peakExternalKiB)} MiB, arrayBuffers ${mib(r.peakArrayBuffersKiB)} MiB; heapUsed after the job + full GC ${mib(r.heapAfterGcKiB)} MiB`,
    );
  }
  if (results.length >= 2) {
    const a = results[0]!;
    const b = results[results.length - 1]!;
    console.log(`  FIGURE 4 peak RSS ${b.images} / ${a.images} images = ${fmt(b.maxRssKiB / a.maxRssKiB, 3)} (growth during the job: ${mib(a.maxRssKiB - a.rssBeforeJobKiB)} vs ${mib(b.maxRssKiB - b.rssBeforeJobKiB)} MiB; peak heapUsed ratio ${fmt(b.peakHeapUsedKiB / a.peakHeapUsedKiB, 2)})`);
  }
}
