/**
 * Batch mode (issue 17): the cost of the same job interactive vs batch, and the rounds a
 * batch stage needs at a given failure rate.
 *
 * A real pipeline (`openPipeline`: PGlite in a temp data folder, the folder store, the
 * Gemini adapters through the real `@google/genai` SDK) against the Gemini-protocol test
 * server in this process. The job: 3 stages x 100 images, `gemini-2.5-flash-image`.
 * Interactive: each call fails with a 503 at rate p. Batch: each request of a batch fails
 * (a per-request 503) at rate p, decided by a hash of its key, so a run is reproducible.
 * The cost is the summary's `cost.estimatedUsd`: usage x the price table's list prices,
 * at half for batch answers (`batchPricing`).
 *
 * `npm run bench:build && node dist-bench/bench/batch.js`
 * (`BENCH_BATCH_RATES=0.05,0.2,0.4`, `BENCH_BATCH_QUANTITY=100`, `BENCH_BATCH_RUNS=1`)
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom } from 'rxjs';
import { loadConfig } from '../src/config.js';
import { grantCredits } from '../src/db/index.js';
import { jobSummary, type JobSummary } from '../src/jobs/job-summary.js';
import { runJob } from '../src/jobs/run-job.js';
import { importInputImage } from '../src/jobs/submit-job.js';
import { engineOptionsOf, openPipeline } from '../src/pipeline.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../test/support/fake-gemini-server.js';
import { inputPng } from './support.js';

const MODEL = 'gemini-2.5-flash-image';
const STAGES = 3;

/** A fraction in [0, 1) from a string, stable across runs. */
function unit(text: string): number {
  return createHash('sha256').update(text).digest().readUInt32BE(0) / 2 ** 32;
}

async function runOnce(mode: 'interactive' | 'batch', failureRate: number, quantity: number): Promise<{ summary: JobSummary; ms: number; server: FakeGeminiServer }> {
  const server = await startFakeGeminiServer({
    latencyMs: 20,
    behavior: ({ n }) => (unit(`call-${n}`) < failureRate ? 'status:503' : 'image'),
    batchBehavior: (item) => (unit(`batch-${item.key ?? item.n}`) < failureRate ? 'status:503' : 'image'),
    batchPlan: () => ({ runningGets: 1 }),
  });
  const dir = await mkdtemp(join(tmpdir(), 'imagegen-bench-batch-'));
  try {
    const config = loadConfig({
      ...process.env,
      DATABASE_URL: '',
      IMAGEGEN_DATA_DIR: join(dir, 'data'),
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      GEMINI_MODEL: MODEL,
      IMAGEGEN_LOG_LEVEL: 'warn',
      IMAGEGEN_BATCH_POLL_MS: '50',
      IMAGEGEN_BATCH_POLL_MAX_MS: '200',
      IMAGEGEN_BACKOFF_BASE_MS: '10',
      IMAGEGEN_BACKOFF_MAX_MS: '50',
      IMAGEGEN_CONCURRENCY: '10',
    });
    const pipeline = await openPipeline(config);
    try {
      const userId = 'bench-batch';
      await grantCredits(pipeline.database, userId, STAGES * quantity);
      const inputAttachId = await importInputImage(pipeline, userId, { ...(await inputPng()), mimeType: 'image/png' });
      const spec = {
        jobId: `bench-${mode}-${Math.round(failureRate * 100)}`,
        userId,
        ...(mode === 'batch' ? { mode } : {}),
        stages: Array.from({ length: STAGES }, (_, i) => ({ prompt: `bench stage ${i}`, quantity, mergedImageAttachId: inputAttachId })),
      };
      const started = performance.now();
      await lastValueFrom(runJob({ ...pipeline, config }, { spec }, engineOptionsOf(config)));
      const ms = performance.now() - started;
      return { summary: await jobSummary(pipeline.database, spec.jobId), ms, server };
    } finally {
      await pipeline.close();
    }
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const rates = (process.env['BENCH_BATCH_RATES'] ?? '0.05,0.2,0.4').split(',').map(Number);
  const quantity = Number(process.env['BENCH_BATCH_QUANTITY'] ?? 100);
  console.log(`batch mode: ${STAGES} x ${quantity} images, ${MODEL}, failures by a hash of each call / request key`);
  console.log('mode        | p    | status    | delivered | rounds per stage | batches | calls/requests | estimated cost | per image');
  for (const p of rates) {
    for (const mode of ['interactive', 'batch'] as const) {
      const { summary, server } = await runOnce(mode, p, quantity);
      const rounds = summary.stages.map((s) => s.rounds?.length ?? 0);
      if (process.env["BENCH_BATCH_TRACE"] === "1") console.log(JSON.stringify(summary.stages.map((s) => s.rounds)));
      const sent = mode === 'batch' ? server.batches.reduce((n, b) => n + b.requests.length, 0) : server.calls();
      const perImage = summary.cost.perDeliveredImageUsd === null ? 'n/a' : `$${summary.cost.perDeliveredImageUsd.toFixed(5)}`;
      console.log(
        `${mode.padEnd(11)} | ${p.toFixed(2)} | ${summary.status.padEnd(9)} | ${String(summary.deliveredImages).padStart(9)} | ${(mode === 'batch' ? rounds.join(', ') : '-').padEnd(16)} | ${String(mode === 'batch' ? server.batches.length : 0).padStart(7)} | ${String(sent).padStart(14)} | $${summary.cost.estimatedUsd.toFixed(4).padStart(13)} | ${perImage}`,
      );
    }
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
