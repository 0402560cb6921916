/**
 * `imagegen run` end to end against a Gemini-protocol server with injected faults:
 * exact counts, the `--json` contract, order, storage, money, and the rerun of a
 * finished job.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { randomMixBehavior } from '../support/fake-gemini-server.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { generatedFiles, jobSpec, parseSingleJson, pgliteOf, readDb, stampsOnDisk, type Summary } from '../support/cli-workspace.js';

/** How the pipeline classifies each fake behavior (see classify-gemini-error.ts). */
const CLASS_OF: Record<string, string> = {
  'status:429': 'rate_limited',
  'status:503': 'overloaded',
  'status:500': 'overloaded',
  text_only: 'no_image',
  drop: 'network',
};

describe('imagegen run (gemini provider, 25% injected faults)', () => {
  const JOB_ID = 'e2e-exact';
  const USER = 'user-exact';
  const STAGES = [
    ['a red fox', 6],
    ['a blue whale', 7],
    ['a green frog', 5],
  ] as const;
  const TOTAL = 18;
  let suite: CliSuite;
  let jobFile: string;
  let first: Summary | undefined;

  beforeAll(async () => {
    suite = await openCliSuite({
      server: {
        latencyMs: 15,
        behavior: randomMixBehavior({
          seed: 11,
          failureRate: 0.25,
          // 429 with a short server retry delay so the test stays fast.
          classes: [{ status: 429, retryDelay: '0.05s', retryAfter: null }, 'status:503', 'status:500', 'text_only', 'drop'],
        }),
      },
      // Enough budget that a 25% fault rate can never end a slot short: the test is about exactness.
      env: { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200' },
      grants: { [USER]: 50 },
    });
    jobFile = await suite.ws.writeJob('job.json', jobSpec(JOB_ID, USER, STAGES));
  });

  afterAll(() => suite?.close());

  it('delivers exactly the asked images, exit 0, and the --json summary, status, disk, DB and credits all agree', { timeout: 120_000 }, async () => {
    const run = await suite.run(['run', jobFile, '--json']);
    expect(run.code, run.stderr).toBe(0);
    const summary = parseSingleJson<Summary>(run.stdout);
    first = summary;

    // The contract's shape, exactly (no missing or surprise top-level keys).
    expect(Object.keys(summary).sort()).toEqual(['attachIds', 'attempts', 'cost', 'credits', 'deliveredImages', 'jobId', 'stages', 'status', 'totalImages'].sort());
    // Every delivered image's answer was priced; no cap was set.
    const { cost } = summary;
    expect(cost.estimatedUsd).toBeGreaterThan(0);
    expect(cost.perDeliveredImageUsd).toBeCloseTo(cost.estimatedUsd / TOTAL, 12);
    expect(cost.maxCostUsd).toBeNull();
    expect(summary).toMatchObject({ jobId: JOB_ID, status: 'completed', totalImages: TOTAL, deliveredImages: TOTAL });
    expect(summary.stages.map((s) => [s.index, s.quantity, s.delivered, s.attachIds.length, s.shortfall])).toEqual([
      [0, 6, 6, 6, null],
      [1, 7, 7, 7, null],
      [2, 5, 5, 5, null],
    ]);
    // Merged ids are the stages' ids concatenated in stage order; all distinct.
    expect(summary.attachIds).toEqual(summary.stages.flatMap((s) => s.attachIds));
    expect(new Set(summary.attachIds).size).toBe(TOTAL);

    // Faults really happened, and every provider call is one recorded attempt.
    const calls = suite.server.requests;
    const failedCalls = calls.filter((c) => c.behavior !== 'image');
    expect(failedCalls.length).toBeGreaterThan(0);
    expect(calls.every((c) => c.apiKeyOk)).toBe(true);
    expect(summary.attempts.total).toBe(suite.server.calls());
    expect(summary.attempts.total).toBe(TOTAL + summary.attempts.failed);
    expect(summary.attempts.failed).toBe(failedCalls.length);
    const expectedByClass: Record<string, number> = {};
    for (const c of failedCalls) {
      const cls = CLASS_OF[c.behavior] ?? `unexpected:${c.behavior}`;
      expectedByClass[cls] = (expectedByClass[cls] ?? 0) + 1;
    }
    expect(summary.attempts.byClass).toEqual(expectedByClass);

    // Money: one capture per delivered image, the rest of the reservation released.
    expect(summary.credits).toEqual({ reserved: TOTAL, captured: TOTAL, released: 0 });
    expect(summary.credits.released).toBe(summary.credits.reserved - summary.credits.captured);

    // Storage: one object per delivered image, no leftovers, at <data dir>/storage/generated/<jobId>/<stage>/<slot>-<attempt>.webp.
    const storage = join(suite.ws.dataDir, 'storage');
    const files = await generatedFiles(storage, JOB_ID);
    expect(files).toHaveLength(TOTAL);
    for (const f of files) expect(f).toMatch(/^\d+\/\d+-\d+\.webp$/);
    // Each stored image is a distinct image the server served (no duplicate deliveries).
    const stamps = await stampsOnDisk(storage, JOB_ID);
    expect(new Set(stamps).size).toBe(TOTAL);
    const served = new Set(calls.filter((c) => c.servedStamp !== undefined && c.behavior === 'image').map((c) => c.servedStamp));
    for (const s of stamps) expect(served.has(s)).toBe(true);

    // status --json prints the same summary from the database.
    const status = await suite.run(['status', JOB_ID, '--json']);
    expect(status.code, status.stderr).toBe(0);
    expect(parseSingleJson<Summary>(status.stdout)).toEqual(summary);

    const balance = await suite.run(['credits', 'balance', USER, '--json']);
    expect(parseSingleJson(balance.stdout)).toEqual({ userId: USER, balance: 50 - TOTAL, reserved: 0 });

    // The database: attach ids in stage then slot order, each pointing at a file on disk; one capture per attach record.
    const view = await readDb(pgliteOf(suite.ws.dataDir), JOB_ID, USER);
    expect(view.attachments.map((a) => a.id)).toEqual(summary.attachIds);
    expect(view.attachments.map((a) => [a.stage, a.slot])).toEqual(STAGES.flatMap(([, q], s) => Array.from({ length: q }, (_, i) => [s, i])));
    expect(view.attachments.map((a) => a.storageKey).sort()).toEqual(files.map((f) => `generated/${JOB_ID}/${f}`).sort());
    for (const a of view.attachments) expect(a.storageKey).toBe(`generated/${JOB_ID}/${a.stage}/${a.slot}-${a.attempt}.webp`);
    const captures = view.ledger.filter((l) => l.kind === 'capture');
    expect(captures).toHaveLength(TOTAL);
    expect(new Set(captures.map((c) => c.attachId))).toEqual(new Set(summary.attachIds));
    expect(view.attempts).toBe(summary.attempts.total);
  });

  it('running a finished job again prints the same summary, exit 0, with zero provider calls and no new charge; stats --json counts its attempts', { timeout: 120_000 }, async () => {
    expect(first, 'needs the first run of this suite').toBeDefined();
    const callsBefore = suite.server.calls();
    const rerun = await suite.run(['run', jobFile, '--json']);
    expect(rerun.code, rerun.stderr).toBe(0);
    expect(parseSingleJson<Summary>(rerun.stdout)).toEqual(first);
    expect(suite.server.calls()).toBe(callsBefore);
    const balance = await suite.run(['credits', 'balance', USER, '--json']);
    expect(parseSingleJson(balance.stdout)).toEqual({ userId: USER, balance: 50 - TOTAL, reserved: 0 });
    expect(await generatedFiles(join(suite.ws.dataDir, 'storage'), JOB_ID)).toHaveLength(TOTAL);

    // stats --json: numbers from the attempts table, the same as the job's (the only job here).
    const stats = parseSingleJson<Record<string, unknown>>((await suite.run(['stats', '--json'])).stdout);
    const done = first as Summary;
    expect(stats).toMatchObject({ attempts: done.attempts.total, failed: done.attempts.failed, delivered: TOTAL, byClass: done.attempts.byClass });
    // Retries are the attempts numbered > 1 of a slot. Every slot here got its first attempt and was retried
    // until it delivered, so each failed provider call (counted by the server) caused exactly one retry, and a
    // retry delivered for each stored image whose key says attempt > 1 (`<stage>/<slot>-<attempt>.webp`).
    const failedCalls = suite.server.requests.filter((c) => c.behavior !== 'image').length;
    const files = await generatedFiles(join(suite.ws.dataDir, 'storage'), JOB_ID);
    const attemptOf = (f: string) => Number(/-(\d+)\.webp$/.exec(f)?.[1]);
    const deliveredByRetry = files.filter((f) => attemptOf(f) > 1).length;
    expect(failedCalls, 'the injected faults caused retries').toBeGreaterThan(0);
    expect(deliveredByRetry, 'some images came from a retry').toBeGreaterThan(0);
    expect(deliveredByRetry).toBeLessThanOrEqual(failedCalls);
    expect(stats['retries']).toBe(failedCalls);
    expect(stats['retries']).toBe(done.attempts.total - TOTAL);
    expect(stats['retriesDelivered']).toBe(deliveredByRetry);
    expect(stats['retrySuccessRate']).toBe(deliveredByRetry / failedCalls);
    expect(stats['abandoned']).toBe(0);
  });
});
