import { expect, it } from 'vitest';
import { deliverSlot, finishAttempt, jobStats, startAttempt } from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, seedJob } from './fixtures.js';

async function attempt(
  database: Database,
  jobId: string,
  slotIndex: number,
  attemptNo: number,
  outcome: 'delivered' | 'failed' | 'started',
  errorClass: string | null = null,
): Promise<void> {
  await startAttempt(database, { jobId, stageIndex: 0, slotIndex, attempt: attemptNo });
  if (outcome === 'started') return;
  if (outcome === 'delivered') await deliverSlot(database, deliveryOf(jobId, 0, slotIndex, attemptNo));
  await finishAttempt(database, {
    jobId, stageIndex: 0, slotIndex, attempt: attemptNo, outcome, errorClass,
    httpStatus: outcome === 'failed' ? 503 : 200, message: null, latencyMs: 50, usage: null,
  });
}

forEachDatabase('attempt statistics', (ctx) => {
  it('counts attempts, failures by class, retries and the retry success rate', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    // slot 0: delivered first time.
    await attempt(ctx.database, jobId, 0, 1, 'delivered');
    // slot 1: overloaded, then delivered on retry.
    await attempt(ctx.database, jobId, 1, 1, 'failed', 'overloaded');
    await attempt(ctx.database, jobId, 1, 2, 'delivered');
    // slot 2: rate limited, retry no_image, retry delivered.
    await attempt(ctx.database, jobId, 2, 1, 'failed', 'rate_limited');
    await attempt(ctx.database, jobId, 2, 2, 'failed', 'no_image');
    await attempt(ctx.database, jobId, 2, 3, 'delivered');
    // slot 3: overloaded twice, a third attempt still in flight.
    await attempt(ctx.database, jobId, 3, 1, 'failed', 'overloaded');
    await attempt(ctx.database, jobId, 3, 2, 'failed', 'overloaded');
    await attempt(ctx.database, jobId, 3, 3, 'started');

    // retries: (1,2) (2,2) (2,3) (3,2) (3,3) = 5; delivered among them: (1,2) (2,3) = 2.
    expect(await jobStats(ctx.database, { jobId })).toEqual({
      attempts: 9,
      failed: 5,
      delivered: 3,
      abandoned: 0,
      byClass: { overloaded: 3, rate_limited: 1, no_image: 1 },
      retries: 5,
      retriesDelivered: 2,
      retrySuccessRate: 0.4,
      costUsd: 0, wastedUsd: 0, possiblyBilled: { count: 0, usd: 0 }, costByClass: {}, costByModel: {}, batch: { batches: 0, attempts: 0, delivered: 0, costUsd: 0 },
    });

    // Another job only shows up without the filter.
    const other = await seedJob(ctx.database, { quantities: [1] });
    await attempt(ctx.database, other.jobId, 0, 1, 'failed', 'timeout');
    await attempt(ctx.database, other.jobId, 0, 2, 'delivered');
    expect(await jobStats(ctx.database, { jobId: other.jobId })).toMatchObject({ attempts: 2, retries: 1, retriesDelivered: 1, retrySuccessRate: 1, byClass: { timeout: 1 } });
    const all = await jobStats(ctx.database, {});
    expect(all.attempts).toBeGreaterThanOrEqual(11);
    expect(all.byClass['timeout']).toBeGreaterThanOrEqual(1);
  });

  it('has no retry success rate without retries', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await attempt(ctx.database, jobId, 0, 1, 'delivered');
    expect(await jobStats(ctx.database, { jobId })).toEqual({
      attempts: 1, failed: 0, delivered: 1, abandoned: 0, byClass: {}, retries: 0, retriesDelivered: 0, retrySuccessRate: null,
      costUsd: 0, wastedUsd: 0, possiblyBilled: { count: 0, usd: 0 }, costByClass: {}, costByModel: {}, batch: { batches: 0, attempts: 0, delivered: 0, costUsd: 0 },
    });
    expect(await jobStats(ctx.database, { jobId: 'no-such-job' })).toMatchObject({ attempts: 0, retrySuccessRate: null });
  });
});
