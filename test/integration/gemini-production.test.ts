/**
 * Issue 15 A through the whole run (submit, runStoredJob, the real adapter and SDK)
 * against the server speaking Gemini's protocol: quota that will not come back halts
 * the job, policy blocks stop their stage, safety blocks in a row stop theirs, input
 * images the API does not take are converted and fit the request limit, and a stage's
 * imageSize reaches the request.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, lastValueFrom, toArray } from 'rxjs';
import sharp from 'sharp';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { MAX_PROVIDER_INPUT_BYTES } from '../../src/adapters/provider-input-image.js';
import { getAttachment } from '../../src/db/index.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import type { JobFinishedEvent } from '../../src/domain/events.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { jobSummary } from '../../src/jobs/job-summary.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { runStoredJob } from '../../src/streams/run-job.js';
import { inspectInputImage } from '../../src/sources/input-image.js';
import { forEachDatabase } from '../support/databases.js';
import { DAILY_QUOTA_429, startFakeGeminiServer, type FakeBehaviorFn, type FakeGeminiServer } from '../support/fake-gemini-server.js';

const FAST = { backoff: { baseMs: 5, maxMs: 20 }, progressIntervalMs: 20, cancelPollMs: 50 } as const;
/** Gemini's inline request limit: the whole request, base64 image included. */
const INLINE_REQUEST_LIMIT = 20_000_000;

forEachDatabase('Gemini in production: quotas, policy blocks, input images, image sizes (fake Gemini server)', (ctx) => {
  let root: string;
  let store: FolderObjectStore;
  let inputId: string;
  let jobs = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-gemini-prod-'));
    store = new FolderObjectStore({ root });
    const png = new Uint8Array(await sharp({ create: { width: 64, height: 64, channels: 3, background: '#406080' } }).png().toBuffer());
    inputId = await importInputImage({ database: ctx.database, store }, 'u1', { bytes: png, mimeType: 'image/png', width: 64, height: 64 });
    await grantCredits(ctx.database, 'u1', 10_000);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  /** Submits `stages` as a new job and runs it to the end against a fresh server. */
  async function run(
    stages: readonly Record<string, unknown>[],
    behavior: FakeBehaviorFn,
    options: { readonly model?: string; readonly stageConcurrency?: number; readonly maxSafetyBlocksPerStage?: number } = {},
  ): Promise<{ jobId: string; finished: JobFinishedEvent; server: FakeGeminiServer }> {
    const server = await startFakeGeminiServer({ apiKey: 'k', behavior });
    try {
      const jobId = `gp-${ctx.kind}-${process.pid}-${++jobs}`;
      const spec = parseJobSpec({ jobId, userId: 'u1', stages }, options.model ? { imageModel: options.model } : {});
      await submitSpec({ database: ctx.database, store }, spec, { pricePerImage: 1 });
      const generator = new GeminiImageGenerator({ apiKey: 'k', baseUrl: server.url, timeoutMs: 10_000, ...(options.model ? { model: options.model } : {}) });
      const runOptions = { ...FAST, stageConcurrency: options.stageConcurrency ?? 2, ...(options.maxSafetyBlocksPerStage ? { maxSafetyBlocksPerStage: options.maxSafetyBlocksPerStage } : {}) };
      const events = await lastValueFrom(runStoredJob({ database: ctx.database, store, generator }, jobId, runOptions).pipe(toArray()));
      return { jobId, finished: events.at(-1) as JobFinishedEvent, server };
    } finally {
      await server.close();
    }
  }

  it('a daily-quota 429 halts the job after one call per in-flight slot; the summary names the quota', async () => {
    const { jobId, finished, server } = await run(
      [
        { quantity: 4, prompt: 'quota a', mergedImageAttachId: inputId },
        { quantity: 3, prompt: 'quota b', mergedImageAttachId: inputId },
      ],
      () => DAILY_QUOTA_429,
    );
    expect(finished.status).toBe('failed');
    // Two stages, two permits each: at most 4 calls were ever in flight, and no slot was tried twice.
    expect(server.calls()).toBeGreaterThanOrEqual(1);
    expect(server.calls()).toBeLessThanOrEqual(4);
    const attempts = await ctx.database.db.selectFrom('attempts').select(['attempt', 'error_class']).where('job_id', '=', jobId).execute();
    expect(attempts.every((a) => a.attempt === 1 && a.error_class === 'quota_exhausted')).toBe(true);
    const summary = await jobSummary(ctx.database, jobId);
    for (const stage of summary.stages) {
      expect(stage.shortfall).toMatchObject({ errorClass: 'quota_exhausted' });
      expect(stage.shortfall?.detail).toContain('quota exhausted: GenerateRequestsPerDayPerProjectPerModel-FreeTier');
    }
  });

  it('a PROHIBITED_CONTENT stage stops after at most stage-concurrency calls; the other stage completes', async () => {
    const { finished, server } = await run(
      [
        { quantity: 5, prompt: 'forbidden', mergedImageAttachId: inputId },
        { quantity: 2, prompt: 'allowed', mergedImageAttachId: inputId },
      ],
      ({ body }) => (JSON.stringify(body).includes('forbidden') ? 'finish:PROHIBITED_CONTENT' : 'image'),
      { stageConcurrency: 2 },
    );
    expect(server.requests.filter((r) => r.prompt === 'forbidden').length).toBeLessThanOrEqual(2);
    expect(finished.result.stages[0]?.shortfall).toEqual({ count: 5, reason: 'non_retryable', errorClass: 'prompt_blocked' });
    expect(finished.result.stages[1]).toMatchObject({ delivered: 2, shortfall: null });
  });

  it('three IMAGE_SAFETY blocks in a row end the stage safety_blocked (the slot budget would allow 5 per slot)', async () => {
    const { jobId, finished, server } = await run([{ quantity: 2, prompt: 'risky', mergedImageAttachId: inputId }], () => 'finish:IMAGE_SAFETY', { stageConcurrency: 1 });
    expect(server.calls()).toBe(3);
    expect(finished.status).toBe('failed');
    expect(finished.result.stages[0]?.shortfall).toEqual({ count: 2, reason: 'safety_blocked', errorClass: 'safety_blocked' });
    expect((await jobSummary(ctx.database, jobId)).stages[0]?.shortfall).toMatchObject({ reason: 'safety_blocked', detail: 'output blocked: finishReason IMAGE_SAFETY' });
  });

  it('a GIF and a 30 MB PNG are converted / downscaled once and sent under the request limit; the attachments keep the originals', async () => {
    const gif = new Uint8Array(await sharp({ create: { width: 48, height: 32, channels: 3, background: '#ff8800' } }).gif().toBuffer());
    // Noise does not compress: 3200 x 3200 RGB is ~30.7 MB of PNG, over Gemini's 20 MB inline request limit.
    const side = 3200;
    const bigPng = new Uint8Array(await sharp(randomBytes(side * side * 3), { raw: { width: side, height: side, channels: 3 } }).png({ compressionLevel: 1 }).toBuffer());
    expect(bigPng.byteLength).toBeGreaterThan(30_000_000);
    // The import accepts it (the check a job file, an upload and inline data go through).
    expect(await inspectInputImage(bigPng, 'big.png')).toEqual({ image: { mimeType: 'image/png', width: side, height: side } });
    const gifId = await importInputImage({ database: ctx.database, store }, 'u1', { bytes: gif, mimeType: 'image/gif', width: 48, height: 32 });
    const bigId = await importInputImage({ database: ctx.database, store }, 'u1', { bytes: bigPng, mimeType: 'image/png', width: side, height: side });

    const { finished, server } = await run(
      [
        { quantity: 2, prompt: 'from a gif', mergedImageAttachId: gifId },
        { quantity: 1, prompt: 'from a big png', mergedImageAttachId: bigId },
      ],
      () => 'image',
    );
    expect(finished.status).toBe('completed');
    const fromGif = server.requests.filter((r) => r.prompt === 'from a gif');
    expect(fromGif).toHaveLength(2);
    for (const r of fromGif) expect(r.inputImages).toEqual([{ mimeType: 'image/png', byteSize: fromGif[0]?.inputImages[0]?.byteSize }]);
    const fromBig = server.requests.find((r) => r.prompt === 'from a big png');
    expect(fromBig?.inputImages[0]?.mimeType).toBe('image/png');
    expect(fromBig?.inputImages[0]?.byteSize).toBeLessThanOrEqual(MAX_PROVIDER_INPUT_BYTES);
    expect(fromBig?.requestBytes).toBeLessThan(INLINE_REQUEST_LIMIT);
    expect(fromBig?.requestBytes).toBeGreaterThan(1_000_000); // the image went, downscaled, not dropped

    for (const [id, original, type] of [[gifId, gif, 'image/gif'], [bigId, bigPng, 'image/png']] as const) {
      const attachment = await getAttachment(ctx.database, id);
      expect(attachment?.contentType).toBe(type);
      expect(Buffer.from(await firstValueFrom(store.get(attachment?.storageKey ?? ''))).equals(Buffer.from(original))).toBe(true);
    }
  });

  it('imageSize "2K" of a stage reaches the request (gemini-3-pro-image-preview), with TEXT and IMAGE modalities', async () => {
    const { finished, server } = await run([{ quantity: 2, prompt: 'a poster', aspectRatio: '3:4', imageSize: '2K', mergedImageAttachId: inputId }], () => 'image', {
      model: 'gemini-3-pro-image-preview',
    });
    expect(finished.status).toBe('completed');
    expect(server.requests.map((r) => [r.model, r.imageSize, r.aspectRatio, r.responseModalities])).toEqual([
      ['gemini-3-pro-image-preview', '2K', '3:4', ['TEXT', 'IMAGE']],
      ['gemini-3-pro-image-preview', '2K', '3:4', ['TEXT', 'IMAGE']],
    ]);
  });
});
