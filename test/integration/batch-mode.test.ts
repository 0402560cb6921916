/**
 * Batch mode (issue 17) through the whole run: `submitSpec`, `runStoredJob`, the real
 * `GeminiBatchGenerator` and `GeminiImageGenerator` on the real `@google/genai` SDK, the
 * delivery transaction, the folder store, on PGlite and PostgreSQL, against the
 * Gemini-protocol test server (its batch endpoints, with fault injection). The adapters
 * are built from `loadConfig` (GEMINI_API_KEY / GEMINI_BASE_URL) and the run gets the
 * engine options `engineOptionsOf(config)` gives the CLI (IMAGEGEN_BATCH_POLL_MS: a fast poll).
 *
 * - a 3 x 50 batch job with ~20% of the responses failed (503, 500, missing; chosen by a
 *   hash of each request's key, so the rounds are known in advance) ends exact in the
 *   predicted few rounds, each round's batch sent once, at half the interactive price;
 * - a job cancelled while its batches run: the provider's cancel is called for each, the
 *   job ends cancelled, nothing delivered or charged, no further batch;
 * - a batch that fails whole: its attempts fail (retryable, charged to the slot budget),
 *   the next round fills the slots; with a budget of one attempt the job ends short;
 * - a mixed job (a batch stage that ends last, an interactive one): the merge keeps stage order.
 *
 * No verdict depends on the wall clock: held batches end when the test releases them, and
 * every wait is for an event (a server record, an event of the run, a row).
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, lastValueFrom, tap, toArray } from 'rxjs';
import sharp from 'sharp';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { GeminiBatchGenerator } from '../../src/adapters/gemini-batch-generator.js';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { loadConfig, type PipelineConfig } from '../../src/config.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { readJobResult } from '../../src/db/ops/read-job-result.js';
import { replayLedger } from '../../src/db/ops/replay-ledger.js';
import { requestCancel } from '../../src/db/ops/request-cancel.js';
import type { JobFinishedEvent, PipelineEvent } from '../../src/domain/events.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { BATCH_PRICE_RATIO, DEFAULT_PRICES, pricingFor } from '../../src/domain/price-table.js';
import { jobSummary, type JobSummary } from '../../src/jobs/job-summary.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { engineOptionsOf } from '../../src/pipeline.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { batchDisplayName } from '../../src/streams/stored-batch-ports.js';
import { runStoredJob, type RunJobOptions } from '../../src/streams/run-job.js';
import { forEachDatabase, type DatabaseContext } from '../support/databases.js';
import { FAKE_USAGE, startFakeGeminiServer, type FakeBatchItemBehavior, type FakeGeminiServer, type FakeGeminiServerOptions } from '../support/fake-gemini-server.js';
import { readStamp } from '../support/stamped-image.js';
import { waitFor } from '../support/cli.js';

const PRICE = 1;
/** Generous: a loaded 2-core machine; a wait that runs out names what it waited for. */
const WAIT_MS = 60_000;

/** A number in [0, 1) from a string (FNV-1a, then a mix): the same key, the same number, on every run. */
function unitOf(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 15;
  h = Math.imul(h, 0x2c1b3c6d);
  h ^= h >>> 12;
  h = Math.imul(h, 0x297a2d39);
  h ^= h >>> 15;
  return (h >>> 0) / 2 ** 32;
}

const FAILURE_RATE = 0.2;
const FAILURES: readonly FakeBatchItemBehavior[] = ['status:503', 'status:500', 'missing'];
/** The fate of one batch request, by its key (`jobId/stage/slot/attempt`): ~20% fail, retryably. */
function fateOf(key: string): FakeBatchItemBehavior {
  if (unitOf(key) >= FAILURE_RATE) return 'image';
  return FAILURES[Math.floor(unitOf(`${key}#class`) * FAILURES.length)] ?? 'missing';
}

/** One attempt's key, as the pipeline builds it (`batchRequestKey`). */
const keyOf = (jobId: string, stage: number, slot: number, attempt: number) => `${jobId}/${stage}/${slot}/${attempt}`;
/** `jobId/stage/slot/attempt` -> its parts. */
function partsOf(key: string | undefined): { stage: number; slot: number; attempt: number } {
  const m = /\/(\d+)\/(\d+)\/(\d+)$/.exec(key ?? '');
  if (!m) throw new Error(`not a batch request key: ${key}`);
  return { stage: Number(m[1]), slot: Number(m[2]), attempt: Number(m[3]) };
}

/**
 * What `fateOf` makes of a stage: per round, the slots sent (each with attempt = round: a
 * failure's replacement goes into the next round) and how many of them fail.
 */
function predictRounds(jobId: string, stage: number, quantity: number): { requests: number; failed: number }[] {
  const attemptsNeeded = Array.from({ length: quantity }, (_, slot) => {
    let attempt = 1;
    while (fateOf(keyOf(jobId, stage, slot, attempt)) !== 'image') attempt++;
    return attempt;
  });
  const rounds = Math.max(...attemptsNeeded);
  return Array.from({ length: rounds }, (_, i) => ({
    requests: attemptsNeeded.filter((a) => a >= i + 1).length,
    failed: attemptsNeeded.filter((a) => a > i + 1).length,
  }));
}

/** A promise the test resolves: holds a batch RUNNING at the fake server until `release()`. */
function hold(): { readonly promise: Promise<void>; release(): void } {
  let release!: () => void;
  const promise = new Promise<void>((resolve) => (release = resolve));
  return { promise, release };
}

type StageSummary = JobSummary['stages'][number];

forEachDatabase('batch mode through the real SDK against the Gemini-protocol test server', (ctx: DatabaseContext) => {
  let root: string;
  let store: FolderObjectStore;
  let png: Uint8Array;
  const inputs = new Map<string, string>();
  const servers: FakeGeminiServer[] = [];
  let users = 0;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-batch-mode-'));
    store = new FolderObjectStore({ root: join(root, 'storage') });
    png = new Uint8Array(await sharp({ create: { width: 48, height: 27, channels: 3, background: '#2a6f4e' } }).png().toBuffer());
  });
  afterAll(async () => {
    await Promise.all(servers.splice(0).map((s) => s.close()));
    await rm(root, { recursive: true, force: true });
  });

  async function server(options: FakeGeminiServerOptions): Promise<FakeGeminiServer> {
    const s = await startFakeGeminiServer({ apiKey: 'batch-mode-key', ...options });
    servers.push(s);
    return s;
  }

  /** The configuration the CLI would load against `s`: the adapters' key and URL, a fast batch poll. */
  function configFor(s: FakeGeminiServer): PipelineConfig {
    return loadConfig(
      {
        IMAGEGEN_PROVIDER: 'gemini',
        GEMINI_API_KEY: s.apiKey,
        GEMINI_BASE_URL: s.url,
        GEMINI_TIMEOUT_MS: '30000',
        IMAGEGEN_BATCH_POLL_MS: '50',
        IMAGEGEN_BATCH_POLL_MAX_MS: '200',
        IMAGEGEN_BACKOFF_BASE_MS: '5',
        IMAGEGEN_BACKOFF_MAX_MS: '50',
        IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
        IMAGEGEN_PRICE_PER_IMAGE: String(PRICE),
        IMAGEGEN_LOG_LEVEL: 'silent',
      },
      { dataDir: join(root, 'unused-data-dir') },
    );
  }

  /** A user with `credits` and an input image of their own; returns its id. */
  async function seedUser(credits: number): Promise<string> {
    const userId = `batch-user-${ctx.kind}-${++users}`;
    await grantCredits(ctx.database, userId, credits);
    inputs.set(userId, await importInputImage({ database: ctx.database, store }, userId, { bytes: png, mimeType: 'image/png', width: 48, height: 27 }));
    return userId;
  }

  /** Submits `raw` (stages get the user's input image) and returns the job id. */
  async function submit(raw: { jobId: string; userId: string; mode?: string; stages: Record<string, unknown>[] }): Promise<string> {
    const spec = parseJobSpec({ ...raw, stages: raw.stages.map((s) => ({ 'aspect-ratio': '1:1', mergedImageAttachId: inputs.get(raw.userId), ...s })) });
    const { jobId } = await submitSpec({ database: ctx.database, store }, spec, { pricePerImage: PRICE });
    return jobId;
  }

  /** Runs the job to its end through the real adapters; `onEvent` sees each event as it comes. */
  async function run(s: FakeGeminiServer, jobId: string, options: { onEvent?: (e: PipelineEvent) => void; overrides?: RunJobOptions } = {}): Promise<PipelineEvent[]> {
    const config = configFor(s);
    const client = { apiKey: config.gemini.apiKey ?? '', baseUrl: config.gemini.baseUrl, ...(config.gemini.timeoutMs !== undefined ? { timeoutMs: config.gemini.timeoutMs } : {}) };
    const generator = new GeminiImageGenerator(client);
    const batches = new GeminiBatchGenerator(client);
    const pricing = pricingFor(config.prices, generator.model);
    const events$ = runStoredJob({ database: ctx.database, store, generator, batches, pricing }, jobId, {
      ...engineOptionsOf(config),
      cancelPollMs: 50,
      ...options.overrides,
    });
    return lastValueFrom(events$.pipe(tap((e) => options.onEvent?.(e)), toArray()));
  }

  /** The job's generated images, read back: which attempt filled which slot, and the stamp its pixels carry. */
  async function deliveredImages(jobId: string): Promise<{ id: string; stage: number; slot: number; attempt: number; stamp: number }[]> {
    const rows = await ctx.database.db
      .selectFrom('attachments')
      .select(['id', 'stage_index', 'slot_index', 'attempt', 'storage_key'])
      .where('job_id', '=', jobId)
      .orderBy('stage_index')
      .orderBy('slot_index')
      .execute();
    return Promise.all(
      rows.map(async (r) => ({
        id: r.id,
        stage: Number(r.stage_index),
        slot: Number(r.slot_index),
        attempt: Number(r.attempt),
        stamp: await readStamp(await firstValueFrom(store.get(r.storage_key))),
      })),
    );
  }

  /** Money of an ended job: one reservation, one capture per image, the rest released, the ledger replays. */
  async function expectMoney(jobId: string, userId: string, granted: number, delivered: number, total: number): Promise<void> {
    const stored = await readJobResult(ctx.database, jobId);
    expect(stored?.credits).toEqual({ reserved: total * PRICE, captured: delivered * PRICE, released: (total - delivered) * PRICE });
    const ledger = await ctx.database.db.selectFrom('credit_ledger').select(['kind', 'attach_id']).where('job_id', '=', jobId).execute();
    expect(ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
    const captures = ledger.filter((l) => l.kind === 'capture');
    expect(captures).toHaveLength(delivered);
    expect(new Set(captures.map((c) => c.attach_id)).size).toBe(delivered);
    const balance = await getBalance(ctx.database, userId);
    expect(balance).toEqual({ balance: granted - delivered * PRICE, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual(balance);
  }

  /** The stage's batch rounds as the summary shows them (a batch stage has them). */
  function roundsOf(stage: StageSummary | undefined) {
    expect(stage?.mode).toBe('batch');
    expect(stage?.rounds, 'a batch stage lists its rounds').toBeDefined();
    return stage?.rounds ?? [];
  }

  it('a 3 x 50 batch job with ~20% failed responses (503, 500, missing) ends exact in a few rounds, each batch sent once, at half the interactive price', { timeout: 240_000 }, async () => {
    const JOB = 'batch-3x50';
    const QUANTITY = 50;
    const TOTAL = 3 * QUANTITY;
    const s = await server({ batchBehavior: ({ key }) => fateOf(key ?? '') });
    const granted = TOTAL * PRICE + 5;
    const userId = await seedUser(granted);
    await submit({ jobId: JOB, userId, mode: 'batch', stages: [0, 1, 2].map((i) => ({ quantity: QUANTITY, prompt: `catalogue page ${i}` })) });
    // The rounds each stage must take, from the same hash the server decides by.
    const predicted = [0, 1, 2].map((stage) => predictRounds(JOB, stage, QUANTITY));
    for (const rounds of predicted) {
      expect(rounds.length, 'the hash gives each stage at least one retry round and few rounds').toBeGreaterThanOrEqual(2);
      expect(rounds.length).toBeLessThanOrEqual(5);
    }
    const failedPredicted = predicted.flat().reduce((a, r) => a + r.failed, 0);
    const requestsPredicted = predicted.flat().reduce((a, r) => a + r.requests, 0);
    // About 20% of the responses fail.
    expect(failedPredicted / requestsPredicted).toBeGreaterThan(0.1);
    expect(failedPredicted / requestsPredicted).toBeLessThan(0.3);

    const events = await run(s, JOB);
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.type).toBe('job:finished');
    expect(finished.status).toBe('completed');

    const summary = await jobSummary(ctx.database, JOB);
    expect(summary).toMatchObject({ status: 'completed', mode: 'batch', totalImages: TOTAL, deliveredImages: TOTAL });
    expect(summary.stages.map((st) => [st.mode, st.delivered, st.shortfall])).toEqual([0, 1, 2].map(() => ['batch', QUANTITY, null]));
    expect(summary.attachIds).toEqual(finished.attachIds);
    expect(summary.attachIds).toEqual(summary.stages.flatMap((st) => st.attachIds));

    // Rounds: as predicted (>= 2, <= 5 per stage), each one batch the server got once, the
    // summary's counts the server's: requests sent, images delivered, the rest failed.
    const byName = new Map(s.batches.map((b) => [b.name, b]));
    expect(byName.size).toBe(s.batches.length);
    const allRounds = summary.stages.flatMap((st) => roundsOf(st).map((r) => ({ stage: st.index, ...r })));
    expect(s.batches.length, 'one batch per round: no round sent twice').toBe(allRounds.length);
    expect(s.batchCalls().create).toBe(allRounds.length);
    expect(new Set(allRounds.map((r) => r.batch)).size).toBe(allRounds.length);
    for (const st of summary.stages) {
      const rounds = roundsOf(st);
      expect(rounds.map((r) => r.round)).toEqual(rounds.map((_, i) => i + 1));
      expect(rounds.map((r) => ({ requests: r.requests, failed: r.failed })), `stage ${st.index} rounds`).toEqual(predicted[st.index]);
      for (const r of rounds) {
        const batch = byName.get(r.batch ?? '');
        expect(batch, `round ${st.index}#${r.round}'s batch ${r.batch} is one the server got`).toBeDefined();
        expect(batch?.displayName).toBe(batchDisplayName(JOB, st.index, r.round));
        expect(batch?.state).toBe('BATCH_STATE_SUCCEEDED');
        expect(r.state).toBe('succeeded');
        expect(r.error).toBeNull();
        expect(batch?.requests).toHaveLength(r.requests);
        const keys = (batch?.requests ?? []).map((q) => partsOf(q.key));
        // The round's requests: this stage's slots, each once, at attempt = round.
        expect(keys.every((k) => k.stage === st.index && k.attempt === r.round)).toBe(true);
        expect(new Set(keys.map((k) => k.slot)).size).toBe(r.requests);
        const served = (batch?.requests ?? []).filter((q) => q.behavior === 'image').length;
        expect(r.delivered).toBe(served);
        expect(r.delivered + r.failed).toBe(r.requests);
      }
      // Round n+1 carries exactly the slots round n failed.
      for (let i = 1; i < rounds.length; i++) {
        const previous = byName.get(rounds[i - 1]?.batch ?? '')?.requests ?? [];
        const failedSlots = previous.filter((q) => q.behavior !== 'image').map((q) => partsOf(q.key).slot).sort((a, b) => a - b);
        const sentSlots = (byName.get(rounds[i]?.batch ?? '')?.requests ?? []).map((q) => partsOf(q.key).slot).sort((a, b) => a - b);
        expect(sentSlots, `stage ${st.index} round ${i + 1} resends round ${i}'s failures`).toEqual(failedSlots);
      }
    }
    // All three failure kinds happened, and were retried.
    const behaviors = new Set(s.batches.flatMap((b) => b.requests.map((q) => q.behavior)));
    for (const f of ['status:503', 'status:500', 'missing']) expect(behaviors.has(f), f).toBe(true);
    expect(summary.attempts).toMatchObject({ total: requestsPredicted, failed: failedPredicted, abandoned: 0 });
    expect(s.calls(), 'no interactive call').toBe(0);

    // No slot filled twice: one attach record per slot, each from the attempt the server answered
    // with an image, carrying the stamp the server served for that very request.
    const images = await deliveredImages(JOB);
    expect(images).toHaveLength(TOTAL);
    expect(new Set(images.map((i) => `${i.stage}/${i.slot}`)).size).toBe(TOTAL);
    expect(images.map((i) => i.id)).toEqual(summary.attachIds);
    const servedByKey = new Map(s.batches.flatMap((b) => b.requests.map((q) => [q.key, q] as const)));
    for (const image of images) {
      const request = servedByKey.get(keyOf(JOB, image.stage, image.slot, image.attempt));
      expect(request?.behavior).toBe('image');
      expect(image.stamp).toBe(request?.servedStamp);
    }
    expect(new Set(images.map((i) => i.stamp)).size).toBe(TOTAL);
    const deliveredAttempts = await ctx.database.db.selectFrom('attempts').select(['stage_index', 'slot_index']).where('job_id', '=', JOB).where('outcome', '=', 'delivered').execute();
    expect(deliveredAttempts).toHaveLength(TOTAL);
    expect(await ctx.database.db.selectFrom('attempts').select('outcome').where('job_id', '=', JOB).where('outcome', 'not in', ['delivered', 'failed']).execute()).toEqual([]);

    await expectMoney(JOB, userId, granted, TOTAL, TOTAL);

    // Cost: each answer at batch prices, i.e. half of what the same usage costs at the
    // interactive price (the price table's, computed here from the stored usage).
    const interactive = pricingFor(DEFAULT_PRICES, new GeminiImageGenerator({ apiKey: 'k' }).model);
    const answered = await ctx.database.db
      .selectFrom('attempts')
      .innerJoin('stages', (j) => j.onRef('stages.job_id', '=', 'attempts.job_id').onRef('stages.stage_index', '=', 'attempts.stage_index'))
      .select(['attempts.outcome', 'attempts.prompt_tokens', 'attempts.image_count', 'attempts.thoughts_tokens', 'attempts.cost_usd', 'attempts.model', 'stages.prompt', 'stages.input_attach_id'])
      .where('attempts.job_id', '=', JOB)
      .where('attempts.outcome', '=', 'delivered')
      .execute();
    let interactiveUsd = 0;
    for (const a of answered) {
      expect(a.model).toBe(interactive.model);
      expect({ prompt: a.prompt_tokens, images: a.image_count }).toEqual({ prompt: FAKE_USAGE.promptTokenCount, images: 1 });
      const usd = interactive.costUsd({ prompt: a.prompt, inputAttachId: a.input_attach_id }, { promptTokens: a.prompt_tokens ?? undefined, imageCount: a.image_count ?? undefined, thoughtsTokens: a.thoughts_tokens ?? undefined }) ?? NaN;
      expect(a.cost_usd).toBeCloseTo(usd * BATCH_PRICE_RATIO, 12);
      interactiveUsd += usd;
    }
    expect(BATCH_PRICE_RATIO).toBe(0.5);
    expect(summary.cost.estimatedUsd).toBeGreaterThan(0);
    expect(summary.cost.estimatedUsd).toBeCloseTo(interactiveUsd / 2, 9);
    // The same figure from the price table alone: 150 images of the fake's usage, halved.
    const perImage = interactive.costUsd({ prompt: 'p', inputAttachId: inputs.get(userId) ?? null }, { promptTokens: FAKE_USAGE.promptTokenCount, imageCount: 1 }) ?? NaN;
    expect(summary.cost.estimatedUsd).toBeCloseTo((TOTAL * perImage) / 2, 9);
    expect(summary.cost.perDeliveredImageUsd).toBeCloseTo(perImage / 2, 12);
  });

  it('a job cancelled while its batches run: each batch is cancelled at the provider, the job ends cancelled, nothing delivered, every credit released, no further batch', { timeout: 120_000 }, async () => {
    const JOB = 'batch-cancel';
    const running = hold();
    const s = await server({ batchPlan: () => ({ hold: running.promise }) });
    const granted = 20;
    const userId = await seedUser(granted);
    await submit({ jobId: JOB, userId, mode: 'batch', stages: [{ quantity: 6, prompt: 'cancel me a' }, { quantity: 4, prompt: 'cancel me b' }] });
    let cancels: Promise<boolean> | undefined;
    try {
      const runDone = run(s, JOB);
      // Both stages' batches are at the provider and being polled (RUNNING, held): cancel now.
      await waitFor('both batches created and polled', () => s.batches.length === 2 && s.batches.every((b) => b.gets >= 1 && b.state === 'BATCH_STATE_RUNNING'), WAIT_MS, 20);
      cancels = requestCancel(ctx.database, JOB);
      const events = await runDone;
      expect(await cancels).toBe(true);
      const finished = events.at(-1) as JobFinishedEvent;
      expect(finished.status).toBe('cancelled');
      expect(events.filter((e) => e.type === 'slot:delivered')).toEqual([]);
      // The cancel reaches the provider for each batch (a call of its own, awaited as an event).
      await waitFor('the provider cancel of both batches', () => s.batchCalls().cancel >= 2 && s.batches.every((b) => b.state === 'BATCH_STATE_CANCELLED'), WAIT_MS, 20);
    } finally {
      running.release();
      await cancels?.catch(() => undefined);
    }
    expect(s.batches, 'no further batch after the cancel').toHaveLength(2);
    expect(s.batchCalls().create).toBe(2);
    expect(s.calls()).toBe(0);

    const summary = await jobSummary(ctx.database, JOB);
    expect(summary).toMatchObject({ status: 'cancelled', mode: 'batch', deliveredImages: 0, attachIds: [] });
    for (const st of summary.stages) {
      const rounds = roundsOf(st);
      expect(rounds).toHaveLength(1);
      expect(rounds[0]).toMatchObject({ round: 1, requests: st.quantity, delivered: 0, failed: st.quantity });
      expect(rounds[0]?.batch).toBe(s.batches.find((b) => b.displayName === batchDisplayName(JOB, st.index, 1))?.name);
    }
    // Every attempt ended as a user's cancel (not abandoned, not left started).
    const attempts = await ctx.database.db.selectFrom('attempts').select(['outcome', 'error_class']).where('job_id', '=', JOB).execute();
    expect(attempts).toHaveLength(10);
    expect(attempts.every((a) => a.outcome === 'failed' && a.error_class === 'cancelled'), JSON.stringify(attempts)).toBe(true);
    expect(await deliveredImages(JOB)).toEqual([]);
    await expectMoney(JOB, userId, granted, 0, 10);
  });

  it('a batch that fails whole: its attempts fail retryably and are charged to the slot budget, round 2 fills the slots; with one attempt per slot the job ends short on it', { timeout: 120_000 }, async () => {
    const JOB = 'batch-whole-fail';
    const QUANTITY = 6;
    const REASON = 'The batch failed: the test server lost its shard.';
    const s = await server({ batchPlan: ({ seq }) => (seq === 1 ? { outcome: 'failed', reason: REASON } : {}) });
    const granted = 20;
    const userId = await seedUser(granted);
    await submit({ jobId: JOB, userId, mode: 'batch', stages: [{ quantity: QUANTITY, prompt: 'whole fail' }] });
    const events = await run(s, JOB);
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.status).toBe('completed');
    expect(s.batches.map((b) => b.state)).toEqual(['BATCH_STATE_FAILED', 'BATCH_STATE_SUCCEEDED']);

    const summary = await jobSummary(ctx.database, JOB);
    expect(summary).toMatchObject({ status: 'completed', deliveredImages: QUANTITY, credits: { reserved: QUANTITY, captured: QUANTITY, released: 0 } });
    const rounds = roundsOf(summary.stages[0]);
    expect(rounds).toHaveLength(2);
    expect(rounds[0]).toMatchObject({ round: 1, batch: s.batches[0]?.name, state: 'failed', requests: QUANTITY, delivered: 0, failed: QUANTITY });
    expect(rounds[0]?.error).toContain(REASON);
    expect(rounds[1]).toMatchObject({ round: 2, batch: s.batches[1]?.name, state: 'succeeded', requests: QUANTITY, delivered: QUANTITY, failed: 0, error: null });

    // Round 1's attempts: failed, retryable (each slot's replacement was scheduled), with the reason.
    const failures = events.filter((e): e is Extract<PipelineEvent, { type: 'attempt:failed' }> => e.type === 'attempt:failed');
    expect(failures).toHaveLength(QUANTITY);
    for (const f of failures) expect(f).toMatchObject({ attempt: 1, errorClass: 'overloaded', willRetry: true });
    const rows = await ctx.database.db.selectFrom('attempts').select(['slot_index', 'attempt', 'outcome', 'error_class', 'message']).where('job_id', '=', JOB).orderBy('attempt').orderBy('slot_index').execute();
    expect(rows.map((r) => [r.attempt, r.outcome, r.error_class])).toEqual([
      ...Array.from({ length: QUANTITY }, () => [1, 'failed', 'overloaded']),
      ...Array.from({ length: QUANTITY }, () => [2, 'delivered', null]),
    ]);
    for (const r of rows.filter((row) => row.attempt === 1)) expect(r.message).toContain(REASON);
    // Charged to the budget: every slot used two attempts, and round 2 sent attempt 2.
    const slots = await ctx.database.db.selectFrom('slots').select(['attempts_used']).where('job_id', '=', JOB).execute();
    expect(slots.map((r) => r.attempts_used)).toEqual(Array.from({ length: QUANTITY }, () => 2));
    expect(s.batches[1]?.requests.map((q) => partsOf(q.key).attempt)).toEqual(Array.from({ length: QUANTITY }, () => 2));
    const images = await deliveredImages(JOB);
    expect(images.map((i) => i.attempt)).toEqual(Array.from({ length: QUANTITY }, () => 2));
    expect(new Set(images.map((i) => i.stamp)).size).toBe(QUANTITY);
    await expectMoney(JOB, userId, granted, QUANTITY, QUANTITY);

    // The same failure with one attempt per slot: the budget is spent, no second round, the job ends failed and says why.
    const SHORT = 'batch-whole-fail-budget';
    const s2 = await server({ batchPlan: () => ({ outcome: 'failed', reason: REASON }) });
    const user2 = await seedUser(granted);
    await submit({ jobId: SHORT, userId: user2, mode: 'batch', stages: [{ quantity: QUANTITY, prompt: 'whole fail, one try' }] });
    const shortEvents = await run(s2, SHORT, { overrides: { maxAttemptsPerSlot: 1 } });
    expect((shortEvents.at(-1) as JobFinishedEvent).status).toBe('failed');
    expect(s2.batches, 'no round after the budget is spent').toHaveLength(1);
    const shortSummary = await jobSummary(ctx.database, SHORT);
    expect(shortSummary.stages[0]?.shortfall).toMatchObject({ count: QUANTITY, reason: 'budget_exhausted', errorClass: 'overloaded' });
    expect(shortSummary.stages[0]?.shortfall?.detail).toContain(REASON);
    expect(roundsOf(shortSummary.stages[0])).toEqual([{ round: 1, batch: s2.batches[0]?.name, state: 'failed', requests: QUANTITY, delivered: 0, failed: QUANTITY, error: expect.stringContaining(REASON) as unknown }]);
    await expectMoney(SHORT, user2, granted, 0, QUANTITY);
  });

  it('a mixed job (stage 0 batch, ending last; stage 1 interactive): the merged attach ids are stage 0 then stage 1, the modes batch / interactive', { timeout: 120_000 }, async () => {
    const JOB = 'batch-mixed';
    const running = hold();
    const s = await server({ batchPlan: () => ({ hold: running.promise }) });
    const granted = 20;
    const userId = await seedUser(granted);
    await submit({
      jobId: JOB,
      userId,
      stages: [
        { quantity: 4, prompt: 'the batch stage', mode: 'batch' },
        { quantity: 3, prompt: 'the interactive stage' },
      ],
    });
    let events: PipelineEvent[];
    try {
      // The batch stays RUNNING until the interactive stage has completed: stage 0 surely ends last.
      events = await run(s, JOB, { onEvent: (e) => (e.type === 'stage:completed' && e.stage === 1 ? running.release() : undefined) });
    } finally {
      running.release();
    }
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.status).toBe('completed');
    const stage1Done = events.findIndex((e) => e.type === 'stage:completed' && e.stage === 1);
    const stage0First = events.findIndex((e) => e.type === 'slot:delivered' && e.stage === 0);
    expect(stage1Done).toBeGreaterThanOrEqual(0);
    expect(stage0First, 'the batch stage delivered after the interactive stage completed').toBeGreaterThan(stage1Done);

    const summary = await jobSummary(ctx.database, JOB);
    // An interactive job's summary has no `mode` (as before batch mode); a batch stage says it.
    expect('mode' in summary).toBe(false);
    expect(summary.stages.map((st) => st.mode)).toEqual(['batch', undefined]);
    expect('mode' in summary.stages[1]!).toBe(false);
    expect(summary.stages[1]).not.toHaveProperty('rounds');
    expect(roundsOf(summary.stages[0])).toEqual([{ round: 1, batch: s.batches[0]?.name, state: 'succeeded', requests: 4, delivered: 4, failed: 0, error: null }]);
    expect(summary.stages.map((st) => st.attachIds.length)).toEqual([4, 3]);
    // Stage order in the merge, though stage 0's images came last.
    const merged = [...(summary.stages[0]?.attachIds ?? []), ...(summary.stages[1]?.attachIds ?? [])];
    expect(summary.attachIds).toEqual(merged);
    expect(finished.attachIds).toEqual(merged);
    const deliveredOrder = events.filter((e): e is Extract<PipelineEvent, { type: 'slot:delivered' }> => e.type === 'slot:delivered').map((e) => e.attachId);
    expect(deliveredOrder.slice(0, 3).sort()).toEqual([...(summary.stages[1]?.attachIds ?? [])].sort());
    const images = await deliveredImages(JOB);
    expect(images.map((i) => i.id)).toEqual(merged);
    expect(images.map((i) => i.stage)).toEqual([0, 0, 0, 0, 1, 1, 1]);

    // Each stage went its own way: stage 0 only as one batch, stage 1 only as interactive calls.
    expect(s.batches).toHaveLength(1);
    expect(s.batches[0]?.requests.map((q) => q.prompt)).toEqual(Array.from({ length: 4 }, () => 'the batch stage'));
    expect(s.requests.map((r) => r.prompt)).toEqual(Array.from({ length: 3 }, () => 'the interactive stage'));
    // Same usage, half the price: a batch answer costs half an interactive one.
    const costs = await ctx.database.db.selectFrom('attempts').select(['stage_index', 'cost_usd']).where('job_id', '=', JOB).where('outcome', '=', 'delivered').execute();
    const interactiveCost = costs.find((c) => c.stage_index === 1)?.cost_usd ?? NaN;
    expect(interactiveCost).toBeGreaterThan(0);
    for (const c of costs) expect(c.cost_usd).toBeCloseTo(c.stage_index === 0 ? interactiveCost * BATCH_PRICE_RATIO : interactiveCost, 12);
    await expectMoney(JOB, userId, granted, 7, 7);
  });


  /**
   * The create's answer has not come (the fake creates the batch and never answers:
   * `batchCreateBehavior` `hang`) when the job is cancelled. The batch exists at the provider
   * under the round's display name (stored before the call, the key `findBatch` looks it up
   * by); cancelling the job must cancel it there too, or it runs and is billed for nothing.
   */
  it("a job cancelled while its batch's create call is in flight (no answer yet) cancels that batch at the provider too", { timeout: 120_000 }, async () => {
    const JOB = 'batch-cancel-in-create';
    const s = await server({ batchCreateBehavior: () => 'hang' });
    const granted = 10;
    const userId = await seedUser(granted);
    await submit({ jobId: JOB, userId, mode: 'batch', stages: [{ quantity: 3, prompt: 'cancel during the create' }] });
    const runDone = run(s, JOB);
    await waitFor('the batch created at the provider (its answer held back)', () => s.batches.length === 1, WAIT_MS, 20);
    const cancelled = requestCancel(ctx.database, JOB);
    const events = await runDone;
    expect(await cancelled).toBe(true);
    expect((events.at(-1) as JobFinishedEvent).status).toBe('cancelled');
    await expectMoney(JOB, userId, granted, 0, 3);
    expect(s.batches[0]?.displayName).toBe(batchDisplayName(JOB, 0, 1));
    await waitFor(`the provider cancel of ${s.batches[0]?.name}, created before the job was cancelled`, () => s.batches[0]?.state === 'BATCH_STATE_CANCELLED', WAIT_MS, 50).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; at the provider now: state ${s.batches[0]?.state}, batch calls ${JSON.stringify(s.batchCalls())}`);
    });
    expect(s.batches).toHaveLength(1);
  });
});
