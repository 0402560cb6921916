/**
 * `imagegen stats` and the `--json` summary, through the real CLI (child processes,
 * PGlite), checked exactly against a deterministic schedule of provider answers.
 *
 * The fake Gemini server answers by (stage prompt, call number of that prompt). Every
 * stage has one slot or runs with IMAGEGEN_STAGE_CONCURRENCY=1, so the k-th call of a
 * prompt is a known (slot, attempt): the schedule fixes every figure in advance.
 *
 * | stage | quantity | answers                     | attempts | failed                     | retries (delivered) |
 * | 0 A   | 1        | 503, 503, image             | 3        | overloaded 2               | 2 (1)               |
 * | 1 B   | 1        | 429, image                  | 2        | rate_limited 1             | 1 (1)               |
 * | 2 C   | 2        | image, image                | 2        | -                          | 0                   |
 * | 3 D   | 2        | prompt_blocked (stage stops)| 1        | prompt_blocked 1           | 0                   |
 *
 * Job: 6 images asked, 4 delivered, `partial`; 8 attempts, 4 failed, 3 retries of which
 * 2 delivered (rate 2/3); stage 3 short by 2 with `non_retryable` / `prompt_blocked`.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PRICES, type ModelPrice } from '../../src/domain/price-table.js';
import { FAKE_USAGE, startFakeGeminiServer, type FakeBehavior, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { runCli } from '../support/cli.js';

/**
 * The schedule's money, from the default list prices and the fake's usage: an image answer
 * bills one image and its prompt tokens, a blocked prompt its prompt tokens only (a
 * 503 or a 429 has no answer, so no usage and no cost).
 */
const PRICE = DEFAULT_PRICES['gemini-2.5-flash-image'] as ModelPrice;
const IMAGE_ANSWER_USD = PRICE.perImageUsd.default + (FAKE_USAGE.promptTokenCount * PRICE.inputPerMillionUsd) / 1e6;
const BLOCKED_ANSWER_USD = (FAKE_USAGE.promptTokenCount * PRICE.inputPerMillionUsd) / 1e6;
const SPENT_USD = 4 * IMAGE_ANSWER_USD + BLOCKED_ANSWER_USD;
const usd = (n: number) => expect.closeTo(n, 12);

const PROMPTS = ['sched-A overloaded twice', 'sched-B rate limited once', 'sched-C clean', 'sched-D blocked'] as const;
const QUANTITIES = [1, 1, 2, 2] as const;
/** Per prompt, the answers of its 1st, 2nd, ... call (then `image`). */
const SCHEDULE: Readonly<Record<string, readonly FakeBehavior[]>> = {
  [PROMPTS[0]]: ['status:503', 'status:503', 'image'],
  // A short server delay: the default 429 asks for 2 s.
  [PROMPTS[1]]: [{ status: 429, retryDelay: '0.02s', retryAfter: null }, 'image'],
  [PROMPTS[2]]: ['image', 'image'],
  [PROMPTS[3]]: ['prompt_blocked', 'prompt_blocked'],
};

const TOP_KEYS = ['attachIds', 'attempts', 'cost', 'credits', 'deliveredImages', 'jobId', 'stages', 'status', 'totalImages'];
const COST_KEYS = ['estimatedUsd', 'maxCostUsd', 'perDeliveredImageUsd', 'possiblyBilledCount', 'possiblyBilledUsd', 'wastedUsd'];
const STAGE_KEYS = ['attachIds', 'delivered', 'index', 'quantity', 'shortfall'];
const SHORTFALL_KEYS = ['count', 'detail', 'errorClass', 'reason'];
const ATTEMPTS_KEYS = ['abandoned', 'byClass', 'failed', 'total'];
const CREDITS_KEYS = ['captured', 'released', 'reserved'];
const STATS_KEYS = ['abandoned', 'attempts', 'batch', 'byClass', 'costByClass', 'costByModel', 'costUsd', 'delivered', 'failed', 'possiblyBilled', 'retries', 'retriesDelivered', 'retrySuccessRate', 'wastedUsd'];

/** The fake server's `prompt_blocked` answer as the classifier words it (the summary's `detail`). */
const PROMPT_BLOCKED_DETAIL = 'prompt blocked: PROHIBITED_CONTENT (The prompt was blocked.)';

const keysOf = (value: unknown): string[] => Object.keys(value as object).sort();

/** Exactly one JSON object on stdout. */
function onlyJson(stdout: string): Record<string, unknown> {
  const lines = stdout.split('\n').filter((line) => line.trim() !== '');
  expect(lines, `stdout must be one JSON line:\n${stdout}`).toHaveLength(1);
  return JSON.parse(lines[0] as string) as Record<string, unknown>;
}

describe('imagegen stats and the --json summary, against a deterministic schedule [pglite]', () => {
  let server: FakeGeminiServer;
  let dir: string;
  let env: Record<string, string>;
  const jobId = `stats-summary-${process.pid}`;
  const userId = 'stats-user';
  /** Calls seen per prompt. */
  const seen = new Map<string, number>();
  let runResult: Awaited<ReturnType<typeof runCli>>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imagegen-stats-'));
    server = await startFakeGeminiServer({
      imageSize: 48,
      behavior: ({ body }) => {
        const prompt = (body as { contents?: { parts?: { text?: string }[] }[] }).contents?.[0]?.parts?.[0]?.text ?? '';
        const k = seen.get(prompt) ?? 0;
        seen.set(prompt, k + 1);
        const planned = SCHEDULE[prompt];
        if (!planned) return { status: 400, message: `unexpected prompt ${JSON.stringify(prompt)}` };
        return planned[k] ?? 'image';
      },
    });
    env = {
      IMAGEGEN_DATA_DIR: join(dir, 'data'),
      IMAGEGEN_PROVIDER: 'gemini',
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      IMAGEGEN_BACKOFF_BASE_MS: '5',
      IMAGEGEN_BACKOFF_MAX_MS: '20',
      IMAGEGEN_STAGE_CONCURRENCY: '1',
      IMAGEGEN_CONCURRENCY: '4',
      IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
      IMAGEGEN_LOG_LEVEL: 'warn',
    };
    await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 7, width: 48, height: 27 }));
    await writeFile(
      join(dir, 'job.json'),
      JSON.stringify({ jobId, userId, stages: PROMPTS.map((prompt, i) => ({ quantity: QUANTITIES[i], prompt, 'aspect-ratio': '16:9', inputImage: 'in.png' })) }),
    );

    const grant = await runCli(['credits', 'grant', userId, '10'], { env, cwd: dir });
    expect({ code: grant.code, stderr: grant.stderr }).toMatchObject({ code: 0 });
    runResult = await runCli(['run', 'job.json', '--json'], { env, cwd: dir, timeoutMs: 90_000 });
  }, 150_000);

  afterAll(async () => {
    await server?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('the provider saw exactly the scheduled calls', () => {
    expect({ code: runResult.code, stderr: runResult.stderr.slice(-800) }).toMatchObject({ code: 1 });
    expect(Object.fromEntries(seen)).toEqual({ [PROMPTS[0]]: 3, [PROMPTS[1]]: 2, [PROMPTS[2]]: 2, [PROMPTS[3]]: 1 });
    expect(server.calls()).toBe(8);
  });

  it('run --json: the exact summary, and the exact key set at every depth', () => {
    const summary = onlyJson(runResult.stdout) as {
      attachIds: string[];
      stages: { attachIds: string[]; shortfall: unknown }[];
      attempts: unknown;
      credits: unknown;
      cost: unknown;
    };
    expect(keysOf(summary)).toEqual(TOP_KEYS);
    expect(summary.stages).toHaveLength(4);
    for (const stage of summary.stages) expect(keysOf(stage)).toEqual(STAGE_KEYS);
    const short = summary.stages.filter((s) => s.shortfall !== null);
    expect(short).toHaveLength(1);
    for (const s of short) expect(keysOf(s.shortfall)).toEqual(SHORTFALL_KEYS);
    expect(keysOf(summary.attempts)).toEqual(ATTEMPTS_KEYS);
    expect(keysOf(summary.credits)).toEqual(CREDITS_KEYS);
    expect(keysOf(summary.cost)).toEqual(COST_KEYS);

    const ids = summary.stages.map((s) => s.attachIds);
    expect(ids.map((a) => a.length)).toEqual([1, 1, 2, 0]);
    expect(new Set(ids.flat()).size).toBe(4);
    expect(summary).toEqual({
      jobId,
      status: 'partial',
      totalImages: 6,
      deliveredImages: 4,
      attachIds: ids.flat(),
      stages: [
        { index: 0, quantity: 1, delivered: 1, attachIds: ids[0], shortfall: null },
        { index: 1, quantity: 1, delivered: 1, attachIds: ids[1], shortfall: null },
        { index: 2, quantity: 2, delivered: 2, attachIds: ids[2], shortfall: null },
        { index: 3, quantity: 2, delivered: 0, attachIds: [], shortfall: { count: 2, reason: 'non_retryable', errorClass: 'prompt_blocked', detail: PROMPT_BLOCKED_DETAIL } },
      ],
      attempts: { total: 8, failed: 4, abandoned: 0, byClass: { overloaded: 2, rate_limited: 1, prompt_blocked: 1 } },
      credits: { reserved: 6, captured: 4, released: 2 },
      cost: { estimatedUsd: usd(SPENT_USD), perDeliveredImageUsd: usd(SPENT_USD / 4), wastedUsd: usd(BLOCKED_ANSWER_USD), possiblyBilledUsd: 0, possiblyBilledCount: 0, maxCostUsd: null },
    });
  });

  it('stats --json: exactly the scheduled figures and keys', async () => {
    const stats = await runCli(['stats', '--json'], { env, cwd: dir });
    expect(stats.code).toBe(0);
    const json = onlyJson(stats.stdout);
    expect(keysOf(json)).toEqual(STATS_KEYS);
    expect(json).toEqual({
      attempts: 8,
      failed: 4,
      delivered: 4,
      abandoned: 0,
      byClass: { overloaded: 2, rate_limited: 1, prompt_blocked: 1 },
      // A#2, A#3, B#2; of which A#3 and B#2 delivered.
      retries: 3,
      retriesDelivered: 2,
      retrySuccessRate: 2 / 3,
      costUsd: usd(SPENT_USD),
      wastedUsd: usd(BLOCKED_ANSWER_USD),
      possiblyBilled: { count: 0, usd: 0 },
      costByClass: { delivered: usd(4 * IMAGE_ANSWER_USD), prompt_blocked: usd(BLOCKED_ANSWER_USD) },
      costByModel: { 'gemini-2.5-flash-image': usd(SPENT_USD) },
      batch: { batches: 0, attempts: 0, delivered: 0, costUsd: 0 },
    });
  });

  it('stats (text): the same figures, one line each, every failure class listed once', async () => {
    const stats = await runCli(['stats'], { env, cwd: dir });
    expect(stats.code).toBe(0);
    const lines = stats.stdout.split('\n');
    expect(lines.slice(0, 3)).toEqual(['attempts: 8 (4 delivered, 4 failed, 0 abandoned)', 'retries: 3, delivered 2, success rate 66.7%', 'failures by class:']);
    expect(lines.slice(3).filter((l) => l !== '').sort()).toEqual([
      '  overloaded: 2',
      '  prompt_blocked: 1',
      '  rate_limited: 1',
      `cost by class: delivered $${(4 * IMAGE_ANSWER_USD).toFixed(4)}, prompt_blocked $${Number(BLOCKED_ANSWER_USD.toPrecision(2))}`,
      `cost by model: gemini-2.5-flash-image $${SPENT_USD.toFixed(4)}`,
      `estimated cost: $${SPENT_USD.toFixed(4)} (wasted $${Number(BLOCKED_ANSWER_USD.toPrecision(2))}; 0 timed out, possibly billed $0)`,
    ]);
    expect(stats.stdout.endsWith('\n')).toBe(true);
  });
});
