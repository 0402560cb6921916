import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import sharp from 'sharp';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import type { JobFinishedEvent } from '../../src/domain/events.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { DEFAULT_PRICES, pricingFor } from '../../src/domain/price-table.js';
import { jobSummary } from '../../src/jobs/job-summary.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { runStoredJob } from '../../src/streams/run-job.js';
import { forEachDatabase } from '../support/databases.js';
import { startFakeGeminiServer } from '../support/fake-gemini-server.js';

const FAST = { backoff: { baseMs: 5, maxMs: 20 }, progressIntervalMs: 20, cancelPollMs: 50, stageConcurrency: 1 } as const;
const USAGE = { promptTokenCount: 12, candidatesTokenCount: 1290, totalTokenCount: 1402, thoughtsTokenCount: 100 };
const pricing = pricingFor(DEFAULT_PRICES, 'gemini-2.5-flash-image');

forEachDatabase('the cost of a job and its spend cap (fake Gemini server)', (ctx) => {
  let root: string;
  let store: FolderObjectStore;
  let inputId: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-cost-'));
    store = new FolderObjectStore({ root });
    const png = new Uint8Array(await sharp({ create: { width: 64, height: 64, channels: 3, background: '#808080' } }).png().toBuffer());
    inputId = await importInputImage({ database: ctx.database, store }, 'u1', { bytes: png, mimeType: 'image/png', width: 64, height: 64 });
    await grantCredits(ctx.database, 'u1', 1000);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('records every answer\'s usage (a safety block and thought tokens included), stops at maxCostUsd with cost_cap, and the summary adds up the attempts', async () => {
    // Call 1 is safety-blocked (billed: its usage comes with it); the rest are images.
    const server = await startFakeGeminiServer({ apiKey: 'k', behavior: ({ n }) => (n === 1 ? 'finish:IMAGE_SAFETY' : 'image'), usageMetadata: () => USAGE });
    try {
      const spec = parseJobSpec({ jobId: 'cap-1', userId: 'u1', maxCostUsd: 0.1, stages: [{ quantity: 4, prompt: 'p', mergedImageAttachId: inputId }] });
      await submitSpec({ database: ctx.database, store }, spec, { pricePerImage: 1 });
      const generator = new GeminiImageGenerator({ apiKey: 'k', baseUrl: server.url, timeoutMs: 5000 });
      const events = await lastValueFrom(runStoredJob({ database: ctx.database, store, generator, pricing }, 'cap-1', FAST).pipe(toArray()));
      const finished = events.at(-1) as JobFinishedEvent;
      // $0.0393 estimated per attempt: the blocked answer ($0.00025) and two images ($0.03925 each)
      // leave $0.0788 spent, and a fourth attempt would pass $0.10.
      expect(finished.status).toBe('partial');
      expect(finished.result.stages[0]?.shortfall).toEqual({ count: 2, reason: 'cost_cap', errorClass: null });
      expect(server.calls()).toBe(3);

      const rows = await ctx.database.db
        .selectFrom('attempts')
        .select(['attempt', 'slot_index', 'outcome', 'error_class', 'prompt_tokens', 'output_tokens', 'thoughts_tokens', 'image_count', 'model', 'cost_usd'])
        .where('job_id', '=', 'cap-1')
        .execute();
      expect(rows).toHaveLength(3);
      const blocked = rows.find((r) => r.outcome === 'failed');
      expect(blocked).toMatchObject({ error_class: 'safety_blocked', prompt_tokens: 12, thoughts_tokens: 100, image_count: 0, model: 'gemini-2.5-flash-image' });
      expect(blocked?.cost_usd).toBeCloseTo((12 * 0.3 + 100 * 2.5) / 1e6, 12);
      for (const row of rows.filter((r) => r.outcome === 'delivered')) {
        expect(row).toMatchObject({ prompt_tokens: 12, output_tokens: 1290, thoughts_tokens: 100, image_count: 1 });
        expect(row.cost_usd).toBeCloseTo(0.039 + (12 * 0.3 + 100 * 2.5) / 1e6, 12);
      }

      const summary = await jobSummary(ctx.database, 'cap-1');
      const sum = rows.reduce((total, r) => total + (r.cost_usd ?? 0), 0);
      expect(summary.cost.estimatedUsd).toBeCloseTo(sum, 12);
      expect(summary.cost.wastedUsd).toBeCloseTo(blocked?.cost_usd ?? -1, 12);
      expect(summary.cost.perDeliveredImageUsd).toBeCloseTo(sum / 2, 12);
      expect(summary.cost).toMatchObject({ possiblyBilledUsd: 0, possiblyBilledCount: 0, maxCostUsd: 0.1 });
      expect(summary.stages[0]?.shortfall).toEqual(expect.objectContaining({ reason: 'cost_cap' }));
    } finally {
      await server.close();
    }
  });

  it('a timed-out call is counted possibly billed (one image at list price), not in the estimated cost', async () => {
    const server = await startFakeGeminiServer({ apiKey: 'k', behavior: ({ n }) => (n === 1 ? 'hang' : 'image'), usageMetadata: () => USAGE });
    try {
      const spec = parseJobSpec({ jobId: 'to-1', userId: 'u1', stages: [{ quantity: 1, prompt: 'p', mergedImageAttachId: inputId }] });
      await submitSpec({ database: ctx.database, store }, spec, { pricePerImage: 1 });
      const generator = new GeminiImageGenerator({ apiKey: 'k', baseUrl: server.url, timeoutMs: 300 });
      const events = await lastValueFrom(runStoredJob({ database: ctx.database, store, generator, pricing }, 'to-1', FAST).pipe(toArray()));
      expect((events.at(-1) as JobFinishedEvent).status).toBe('completed');
      const summary = await jobSummary(ctx.database, 'to-1');
      expect(summary.cost).toMatchObject({ possiblyBilledCount: 1, possiblyBilledUsd: 0.039, maxCostUsd: null, wastedUsd: 0 });
      expect(summary.cost.estimatedUsd).toBeCloseTo(0.039 + (12 * 0.3 + 100 * 2.5) / 1e6, 12);
    } finally {
      await server.close();
    }
  });
});
