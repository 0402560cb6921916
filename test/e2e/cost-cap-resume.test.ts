/**
 * The spend cap across runs, through the CLI: a job with `maxCostUsd` killed (SIGKILL)
 * after some images and run again. The second run counts what the first one spent: the
 * whole job, over both runs, stays within the cap and ends `partial` with `cost_cap`.
 * A second run that started its own books would spend the cap again.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { jobSpec, parseSingleJson } from '../support/cli-workspace.js';

interface CappedSummary {
  readonly status: string;
  readonly deliveredImages: number;
  readonly stages: readonly { readonly delivered: number; readonly shortfall: { readonly count: number; readonly reason: string } | null }[];
  readonly attempts: { readonly total: number };
  readonly credits: { readonly reserved: number; readonly captured: number; readonly released: number };
  readonly cost: { readonly estimatedUsd: number; readonly wastedUsd: number; readonly possiblyBilledUsd: number; readonly maxCostUsd: number | null; readonly perDeliveredImageUsd: number | null };
}

describe('imagegen run: a spend cap holds across a crash and a resume', () => {
  const JOB_ID = 'e2e-cap-resume';
  const USER = 'user-cap';
  const QUANTITY = 10;
  const MAX_COST_USD = 0.2;
  /** Calls that answer before the rest hang: the first run commits up to this many images, then is killed. */
  const FAST_CALLS = 3;
  let suite: CliSuite;
  let stalled = true;

  beforeAll(async () => {
    suite = await openCliSuite({
      server: { latencyMs: ({ n }) => (n <= FAST_CALLS || !stalled ? 50 : 120_000) },
      // One call at a time: the first run has at most one call in flight when it is killed.
      env: { IMAGEGEN_CONCURRENCY: '1', IMAGEGEN_STAGE_CONCURRENCY: '1' },
      grants: { [USER]: 100 },
    });
  });

  afterAll(() => suite?.close());

  it('the second run spends only what the first left under the cap: the job ends partial with cost_cap, its cost within maxCostUsd', { timeout: 120_000 }, async () => {
    const spec = { ...(jobSpec(JOB_ID, USER, [['a poster', QUANTITY]]) as object), maxCostUsd: MAX_COST_USD };
    const jobFile = await suite.ws.writeJob('job.json', spec);

    const first = await suite.start(['run', jobFile, '--json']);
    // Progress lines are throttled: any committed image will do, with a later call hanging.
    await waitFor('the first run to commit an image and hang on a later call', () => /^stage 0: [1-9]\d*\/10 delivered/m.test(first.stderr()) && suite.server.calls() > FAST_CALLS, 60_000);
    expect(first.child.exitCode, `the first run ended before the kill:\n${first.stderr()}`).toBeNull();
    first.child.kill('SIGKILL');
    expect((await first.exited).signal).toBe('SIGKILL');

    // What the first run spent, as the job's books have it.
    const before = parseSingleJson<CappedSummary>((await suite.run(['status', JOB_ID, '--json'])).stdout);
    const deliveredBefore = before.deliveredImages;
    expect(deliveredBefore).toBeGreaterThanOrEqual(1);
    expect(deliveredBefore).toBeLessThanOrEqual(FAST_CALLS);
    const perImage = (before.cost.estimatedUsd - before.cost.wastedUsd) / deliveredBefore;
    expect(perImage).toBeGreaterThan(0);

    stalled = false;
    const callsBefore = suite.server.calls();
    const resumed = await suite.run(['run', jobFile, '--json']);
    const summary = parseSingleJson<CappedSummary>(resumed.stdout);
    // A job that ended short exits 1 (README: exit codes).
    expect(resumed.code, resumed.stderr).toBe(1);
    expect(summary.status).toBe('partial');
    expect(summary.stages[0]?.shortfall).toMatchObject({ reason: 'cost_cap', count: QUANTITY - summary.deliveredImages });
    expect(summary.cost.maxCostUsd).toBe(MAX_COST_USD);
    // The whole job, both runs and the call the kill cut (possibly billed), within the cap.
    expect(summary.cost.estimatedUsd + summary.cost.possiblyBilledUsd).toBeLessThanOrEqual(MAX_COST_USD + 1e-9);
    // Every image the cap allowed was made: one more would have passed it.
    expect(summary.cost.estimatedUsd + summary.cost.possiblyBilledUsd + perImage).toBeGreaterThan(MAX_COST_USD);
    // The second run made only the images left under the cap, one call each (no failures injected).
    const madeNow = summary.deliveredImages - deliveredBefore;
    expect(madeNow).toBeGreaterThan(0);
    expect(madeNow).toBeLessThan(Math.floor(MAX_COST_USD / perImage));
    expect(suite.server.calls() - callsBefore).toBe(madeNow);
    // Money: one charge per delivered image, the rest of the reservation released.
    expect(summary.credits).toEqual({ reserved: QUANTITY, captured: summary.deliveredImages, released: QUANTITY - summary.deliveredImages });
  });
});
