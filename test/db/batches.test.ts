/**
 * Batch mode's storage: a round's batch row and its attempts are written together before
 * the provider's create call, once per round; a run that takes the job over finds the
 * rounds still open, and `beginRun` leaves their attempts to it.
 */
import { expect, it } from 'vitest';
import {
  beginRun,
  deliverSlot,
  finishAttempt,
  JobNotFoundError,
  JobStateError,
  listBatches,
  openBatches,
  recordBatchRound,
  recordBatchState,
  setBatchName,
  startAttempt,
} from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, outcomes, seedJob, uid } from './fixtures.js';

async function slotsUsed(database: Database, jobId: string): Promise<string[]> {
  const rows = await database.db
    .selectFrom('slots')
    .select(['stage_index', 'slot_index', 'attempts_used'])
    .where('job_id', '=', jobId)
    .orderBy('stage_index')
    .orderBy('slot_index')
    .execute();
  return rows.map((r) => `${r.stage_index}/${r.slot_index}:${r.attempts_used}`);
}

async function stageStatuses(database: Database, jobId: string): Promise<string[]> {
  const rows = await database.db.selectFrom('stages').select('status').where('job_id', '=', jobId).orderBy('stage_index').execute();
  return rows.map((r) => r.status);
}

async function batchCount(database: Database, jobId: string): Promise<number> {
  const rows = await database.db.selectFrom('batches').select('round').where('job_id', '=', jobId).execute();
  return rows.length;
}

function failed(jobId: string, stageIndex: number, slotIndex: number, attempt: number) {
  return { jobId, stageIndex, slotIndex, attempt, outcome: 'failed' as const, errorClass: 'overloaded', httpStatus: 503, message: null, latencyMs: 5, usage: null };
}

function delivered(jobId: string, stageIndex: number, slotIndex: number, attempt: number) {
  return { ...failed(jobId, stageIndex, slotIndex, attempt), outcome: 'delivered' as const, errorClass: null, httpStatus: null };
}

forEachDatabase('batches', (ctx) => {
  it('recordBatchRound starts every attempt of the round and stores the batch row (no name, submitting) in one go', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3, 2] });
    const displayName = uid('batch');
    const batch = await recordBatchRound(ctx.database, {
      jobId,
      stageIndex: 0,
      round: 1,
      displayName,
      requests: [{ slot: 2, attempt: 1 }, { slot: 0, attempt: 1 }, { slot: 1, attempt: 3 }],
    });
    expect(batch).toEqual({
      jobId,
      stageIndex: 0,
      round: 1,
      displayName,
      name: null,
      state: 'submitting',
      error: null,
      requests: [{ slot: 2, attempt: 1 }, { slot: 0, attempt: 1 }, { slot: 1, attempt: 3 }],
      createdAt: expect.any(Date),
      endedAt: null,
    });
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:started', '0/1/3:started', '0/2/1:started']);
    expect(await slotsUsed(ctx.database, jobId)).toEqual(['0/0:1', '0/1:3', '0/2:1']);
    // Only the batch's stage starts running.
    expect(await stageStatuses(ctx.database, jobId)).toEqual(['running', 'pending']);
  });

  it('recordBatchRound keeps attempts_used from going backwards, as startAttempt does', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 4 });
    await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 2 }, { slot: 1, attempt: 1 }] });
    expect(await slotsUsed(ctx.database, jobId)).toEqual(['0/0:4', '0/1:1']);
  });

  it('recordBatchRound again for the same round returns the stored row and writes nothing', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const requests = [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }];
    const first = await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests });
    await setBatchName(ctx.database, first, 'batches/first');
    // The slot's first attempt ended meanwhile: a repeat must not start it again.
    await finishAttempt(ctx.database, failed(jobId, 0, 0, 1));
    const before = await outcomes(ctx.database, jobId);

    // A retry after a lost connection may come with a fresh display name: the stored one wins.
    const again = await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests });
    expect(again).toEqual({ ...first, name: 'batches/first', state: 'pending' });
    expect(await outcomes(ctx.database, jobId)).toEqual(before);
    expect(await batchCount(ctx.database, jobId)).toBe(1);
  });

  it('recordBatchRound refuses the same round with other requests (or in another order), writing nothing', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }] });
    await expect(
      recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 2, attempt: 1 }] }),
    ).rejects.toThrow(/already stored with other requests \(0#1, 1#1, not 0#1, 2#1\)/);
    await expect(
      recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 1, attempt: 1 }, { slot: 0, attempt: 1 }] }),
    ).rejects.toThrow(/already stored with other requests/);
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:started', '0/1/1:started']);
    expect(await slotsUsed(ctx.database, jobId)).toEqual(['0/0:1', '0/1:1']);
  });

  it('recordBatchRound refuses a slot the stage does not owe with startAttempt\'s errors, and writes nothing at all', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const round = { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 2, attempt: 1 }] };
    const refused = await recordBatchRound(ctx.database, round).catch((e: unknown) => e);
    const single = await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 1 }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(JobStateError);
    expect(single).toBeInstanceOf(JobStateError);
    expect((refused as Error).message).toBe((single as Error).message);
    await expect(recordBatchRound(ctx.database, { ...round, stageIndex: 1 })).rejects.toBeInstanceOf(JobStateError);
    await expect(recordBatchRound(ctx.database, { ...round, jobId: uid('nojob') })).rejects.toBeInstanceOf(JobNotFoundError);

    expect(await batchCount(ctx.database, jobId)).toBe(0);
    expect(await outcomes(ctx.database, jobId)).toEqual([]);
    expect(await slotsUsed(ctx.database, jobId)).toEqual([]);
    expect(await stageStatuses(ctx.database, jobId)).toEqual(['pending']);
  });

  it('recordBatchRound refuses a malformed round before it writes: no requests, a slot twice, round 0', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const base = { jobId, stageIndex: 0, round: 1, displayName: uid('batch') };
    await expect(recordBatchRound(ctx.database, { ...base, requests: [] })).rejects.toThrow(/has no requests/);
    await expect(recordBatchRound(ctx.database, { ...base, requests: [{ slot: 1, attempt: 1 }, { slot: 1, attempt: 2 }] })).rejects.toThrow(/slot 1 twice/);
    await expect(recordBatchRound(ctx.database, { ...base, round: 0, requests: [{ slot: 1, attempt: 1 }] })).rejects.toBeInstanceOf(RangeError);
    expect(await batchCount(ctx.database, jobId)).toBe(0);
    expect(await outcomes(ctx.database, jobId)).toEqual([]);
  });

  it('a display name is one batch: another round cannot reuse it', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const displayName = uid('batch');
    await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName, requests: [{ slot: 0, attempt: 1 }] });
    await expect(recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 2, displayName, requests: [{ slot: 1, attempt: 1 }] })).rejects.toThrow();
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:started']);
  });

  it('setBatchName stores the provider name and moves submitting to pending; another name for the round is refused', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    const key = { jobId, stageIndex: 0, round: 1 };
    await recordBatchRound(ctx.database, { ...key, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }] });
    await setBatchName(ctx.database, key, 'batches/abc');
    expect(await openBatches(ctx.database, jobId)).toMatchObject([{ name: 'batches/abc', state: 'pending', endedAt: null }]);
    // The same name again (a repeated write) changes nothing; a state already reported stays.
    await recordBatchState(ctx.database, key, 'running');
    await setBatchName(ctx.database, key, 'batches/abc');
    expect(await openBatches(ctx.database, jobId)).toMatchObject([{ name: 'batches/abc', state: 'running' }]);
    await expect(setBatchName(ctx.database, key, 'batches/other')).rejects.toThrow(/already batches\/abc, not batches\/other/);
    await expect(setBatchName(ctx.database, { ...key, round: 2 }, 'batches/abc')).rejects.toThrow(/no batch round/);
  });

  it('recordBatchState sets ended_at only at a terminal state, keeps it, stores the error when given, and a terminal state is final', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    const key = { jobId, stageIndex: 0, round: 1 };
    await recordBatchRound(ctx.database, { ...key, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }] });
    const stored = async () => (await listBatches(ctx.database, jobId))[0];

    await recordBatchState(ctx.database, key, 'running');
    expect(await stored()).toMatchObject({ state: 'running', endedAt: null, error: null });
    await recordBatchState(ctx.database, key, 'failed', 'quota exceeded');
    const ended = await stored();
    expect(ended).toMatchObject({ state: 'failed', endedAt: expect.any(Date), error: 'quota exceeded' });

    // The same terminal state reported again keeps ended_at and, without an error, the error.
    await recordBatchState(ctx.database, key, 'failed');
    expect(await stored()).toEqual(ended);
    // A slower poller's stale report cannot reopen an ended batch.
    await recordBatchState(ctx.database, key, 'running', null);
    expect(await stored()).toEqual(ended);
    await expect(recordBatchState(ctx.database, { ...key, round: 9 }, 'running')).rejects.toThrow(/no batch round/);
  });

  it('openBatches narrows each round to its started attempts and drops rounds whose attempts all ended', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3, 2] });
    const round1 = await recordBatchRound(ctx.database, {
      jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }, { slot: 2, attempt: 1 }],
    });
    await recordBatchRound(ctx.database, { jobId, stageIndex: 1, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }] });
    await finishAttempt(ctx.database, delivered(jobId, 0, 0, 1));
    await finishAttempt(ctx.database, failed(jobId, 0, 2, 1));
    const round2 = await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 2, displayName: uid('batch'), requests: [{ slot: 2, attempt: 2 }] });
    await setBatchName(ctx.database, round2, 'batches/r2');
    // Stage 1's round ended entirely.
    await finishAttempt(ctx.database, delivered(jobId, 1, 0, 1));
    await finishAttempt(ctx.database, failed(jobId, 1, 1, 1));

    const open = await openBatches(ctx.database, jobId);
    expect(open).toEqual([
      { ...round1, requests: [{ slot: 1, attempt: 1 }] },
      { ...round2, name: 'batches/r2', state: 'pending', requests: [{ slot: 2, attempt: 2 }] },
    ]);
    expect(await openBatches(ctx.database, uid('nojob'))).toEqual([]);
  });

  it("beginRun leaves a batch's started attempts to the run that takes over, and abandons the job's other started attempts", async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3, 1] });
    await beginRun(ctx.database, jobId);
    await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }] });
    // Not in the batch: slot 2 of stage 0, and stage 1's slot 0 at the attempt number the batch has for stage 0's slot 0.
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 1 });
    await startAttempt(ctx.database, { jobId, stageIndex: 1, slotIndex: 0, attempt: 1 });
    // Slot 1's batch attempt 1 is in the round; its attempt 2 (started apart from it) is not.
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 2 });

    // The process dies here; another one takes the job over.
    expect(await beginRun(ctx.database, jobId)).toMatchObject({ previousRunDied: true, abandoned: 3 });
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:started', '0/1/1:started', '0/1/2:abandoned', '0/2/1:abandoned', '1/0/1:abandoned']);
    expect((await openBatches(ctx.database, jobId)).map((b) => b.requests)).toEqual([[{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }]]);
  });

  it('beginRun marks a batch attempt whose delivery committed `delivered` (the run died before logging it): the open round narrows to the others', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await beginRun(ctx.database, jobId);
    await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 1));
    // The process dies here, before its attempt log wrote slot 0's outcome.
    expect(await beginRun(ctx.database, jobId)).toMatchObject({ previousRunDied: true, abandoned: 0 });
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:delivered', '0/1/1:started']);
    expect((await openBatches(ctx.database, jobId)).map((b) => b.requests)).toEqual([[{ slot: 1, attempt: 1 }]]);
  });

  it('listBatches lists every round of the job with its delivered and failed attempts', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3, 1] });
    const round1 = await recordBatchRound(ctx.database, {
      jobId, stageIndex: 0, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }, { slot: 1, attempt: 1 }, { slot: 2, attempt: 1 }],
    });
    await finishAttempt(ctx.database, delivered(jobId, 0, 0, 1));
    await finishAttempt(ctx.database, failed(jobId, 0, 1, 1));
    await finishAttempt(ctx.database, failed(jobId, 0, 2, 1));
    await recordBatchState(ctx.database, round1, 'succeeded');
    const round2 = await recordBatchRound(ctx.database, { jobId, stageIndex: 0, round: 2, displayName: uid('batch'), requests: [{ slot: 1, attempt: 2 }, { slot: 2, attempt: 2 }] });
    await finishAttempt(ctx.database, delivered(jobId, 0, 1, 2));
    // An attempt of the same slot outside any round does not count for a round.
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 3 });
    await finishAttempt(ctx.database, delivered(jobId, 0, 2, 3));
    const stage1 = await recordBatchRound(ctx.database, { jobId, stageIndex: 1, round: 1, displayName: uid('batch'), requests: [{ slot: 0, attempt: 1 }] });

    const listed = await listBatches(ctx.database, jobId);
    expect(listed.map((b) => [b.stageIndex, b.round, b.state, b.delivered, b.failed])).toEqual([
      [0, 1, 'succeeded', 1, 2],
      [0, 2, 'submitting', 1, 0],
      [1, 1, 'submitting', 0, 0],
    ]);
    expect(listed[1]).toEqual({ ...round2, delivered: 1, failed: 0 });
    expect(listed[2]).toEqual({ ...stage1, delivered: 0, failed: 0 });
    expect(await listBatches(ctx.database, uid('nojob'))).toEqual([]);
  });
});
