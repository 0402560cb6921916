/**
 * A crash never costs budget: attempts a dead run left `started` become `abandoned`
 * (or `delivered` when their delivery committed), the crash streak stops a crash
 * loop, and a job that ended short only because of such attempts reopens.
 */
import { expect, it } from 'vitest';
import {
  beginRun,
  deliverSlot,
  finishAttempt,
  finishJob,
  getBalance,
  jobStats,
  JobStateError,
  loadJob,
  reopenJob,
  replayLedger,
  startAttempt,
  suspendJob,
} from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { InsufficientCreditsError } from '../../src/db/errors.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, outcomes, resultFromDatabase, seedJob } from './fixtures.js';

forEachDatabase('abandoned attempts', (ctx) => {
  it('beginRun abandons the attempts a dead run left started; a committed delivery becomes delivered', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    expect(await beginRun(ctx.database, jobId)).toEqual({ previousRunDied: false, crashResumes: 0, abandoned: 0 });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 1 });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 1 });
    await finishAttempt(ctx.database, {
      jobId, stageIndex: 0, slotIndex: 2, attempt: 1, outcome: 'failed', errorClass: 'overloaded', httpStatus: 503, message: null, latencyMs: 5, usage: null,
    });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 2 });
    // Slot 1's delivery committed, but the process died before it recorded the attempt.
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1, 1));

    // The process dies here: the job is still `running`.
    const began = await beginRun(ctx.database, jobId);
    expect(began).toEqual({ previousRunDied: true, crashResumes: 0, abandoned: 2 });
    expect(await outcomes(ctx.database, jobId)).toEqual(['0/0/1:abandoned', '0/1/1:delivered', '0/2/1:failed', '0/2/2:abandoned']);

    const job = await loadJob(ctx.database, jobId);
    // Numbers continue (attemptsUsed); the budget sees only what ended (attemptsCharged).
    expect(job?.stages[0]).toEqual([
      { attachId: null, attemptsUsed: 1, attemptsCharged: 0 },
      { attachId: expect.any(String), attemptsUsed: 1, attemptsCharged: 1 },
      { attachId: null, attemptsUsed: 2, attemptsCharged: 1 },
    ]);
    expect(await jobStats(ctx.database, { jobId })).toMatchObject({ attempts: 4, abandoned: 2, failed: 1, delivered: 1 });
  });

  it('the crash streak grows only with runs that died without delivering; a hand-back resets it', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    await beginRun(ctx.database, jobId);
    expect((await beginRun(ctx.database, jobId)).crashResumes).toBe(1);
    expect((await beginRun(ctx.database, jobId)).crashResumes).toBe(2);
    // This run delivers one image, then dies: the streak restarts.
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 1));
    expect((await beginRun(ctx.database, jobId)).crashResumes).toBe(0);
    expect((await beginRun(ctx.database, jobId)).crashResumes).toBe(1);
    // A clean hand-back (SIGTERM on a worker) is not a crash.
    await suspendJob(ctx.database, jobId);
    expect(await beginRun(ctx.database, jobId)).toMatchObject({ previousRunDied: false, crashResumes: 0 });
  });

  it('beginRun refuses a finished job', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await beginRun(ctx.database, jobId);
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
    await expect(beginRun(ctx.database, jobId)).rejects.toBeInstanceOf(JobStateError);
  });

  it('reopenJob repairs a job that ended short only because abandoned attempts were charged, reserving the missing images again', async () => {
    const { jobId, userId } = await seedJob(ctx.database, { quantities: [3], pricePerImage: 10, credits: 100 });
    await beginRun(ctx.database, jobId);
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 1));
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 1 });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 1 });
    // What older code did: the job ended partial with `budget_exhausted`, attempts left `started`.
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    await ctx.database.db.updateTable('stages').set({ shortfall_error_class: null }).where('job_id', '=', jobId).execute();
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 90, reserved: 0 });

    const reopened = await reopenJob(ctx.database, jobId);
    expect(reopened).toEqual({ abandoned: 2, reserved: 20 });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 70, reserved: 20 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 70, reserved: 20 });
    const job = await loadJob(ctx.database, jobId);
    expect(job).toMatchObject({ status: 'queued', credits: { reserved: 50, captured: 10, released: 20 } });
    // A second call finds nothing to repair.
    expect(await reopenJob(ctx.database, jobId)).toBeNull();

    // The job runs again and ends; the second round's release is its own.
    await beginRun(ctx.database, jobId);
    for (const slot of [1, 2]) {
      await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: slot, attempt: 2 });
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot, 2));
    }
    const credits = await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    expect(credits).toEqual({ reserved: 50, captured: 30, released: 20 });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 70, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 70, reserved: 0 });
  });

  it('reopenJob leaves alone a job that ended short for any other reason, and refuses without credits', async () => {
    const honest = await seedJob(ctx.database, { quantities: [2] });
    await beginRun(ctx.database, honest.jobId);
    await startAttempt(ctx.database, { jobId: honest.jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    await finishAttempt(ctx.database, {
      jobId: honest.jobId, stageIndex: 0, slotIndex: 0, attempt: 1, outcome: 'failed', errorClass: 'overloaded', httpStatus: 503, message: null, latencyMs: 5, usage: null,
    });
    await finishJob(ctx.database, honest.jobId, await resultFromDatabase(ctx.database, honest.jobId));
    expect(await reopenJob(ctx.database, honest.jobId)).toBeNull();

    const poor = await seedJob(ctx.database, { quantities: [2], pricePerImage: 10, credits: 20 });
    await beginRun(ctx.database, poor.jobId);
    await startAttempt(ctx.database, { jobId: poor.jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    await finishJob(ctx.database, poor.jobId, await resultFromDatabase(ctx.database, poor.jobId));
    // The released 20 credits are spent elsewhere meanwhile.
    await ctx.database.db.updateTable('credit_accounts').set({ balance: 5 }).where('user_id', '=', poor.userId).execute();
    await expect(reopenJob(ctx.database, poor.jobId)).rejects.toBeInstanceOf(InsufficientCreditsError);
    expect((await loadJob(ctx.database, poor.jobId))?.status).toBe('failed');
    expect(await outcomes(ctx.database, poor.jobId)).toEqual(['0/0/1:started']);
  });
});
