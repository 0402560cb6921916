import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ReplaySubject, lastValueFrom, of, switchMap, take, tap, throwError, toArray } from 'rxjs';
import sharp from 'sharp';
import { expect, it } from 'vitest';
import {
  createAttachment,
  deliverSlot,
  finishAttempt,
  finishJob,
  getBalance,
  grantCredits,
  InputAttachmentError,
  isCancelRequested,
  JobOwnershipError,
  loadJob,
  markJobRunning,
  replayLedger,
  requestCancel,
  startAttempt,
  submitJob,
} from '../../src/db/index.js';
import { readJobResult } from '../../src/db/ops/read-job-result.js';
import { PipelineError } from '../../src/domain/error-class.js';
import type { ImageGenerator } from '../../src/domain/ports.js';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { runStoredJob } from '../../src/streams/run-job.js';
import { importInputImage } from '../../src/jobs/submit-job.js';
import { forEachDatabase } from '../support/databases.js';
import { raceCalls, raceTitle } from '../support/pg-race.js';
import { deliveryOf, footprint, inputAttachment, makeSpec, resultFromDatabase, seedJob, uid } from './fixtures.js';

forEachDatabase('jobs', (ctx) => {
  it('submitting the same job id twice returns the existing job and reserves nothing new', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const inputId = await inputAttachment(ctx.database, userId);
    const spec = makeSpec(userId, [2, 1], inputId);
    expect(await submitJob(ctx.database, { spec, pricePerImage: 10 })).toEqual({ jobId: spec.jobId, created: true, status: 'queued' });
    await markJobRunning(ctx.database, spec.jobId ?? '');
    expect(await submitJob(ctx.database, { spec, pricePerImage: 10 })).toEqual({ jobId: spec.jobId, created: false, status: 'running' });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 70, reserved: 30 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 70, reserved: 30 });
  });

  it(raceTitle(ctx.kind, 'parallel submits of one job id create it once'), async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const spec = makeSpec(userId, [1], await inputAttachment(ctx.database, userId));
    // PostgreSQL: all five transactions are open and wait on the user's account row; the first creates the
    // job, the other four find it once they get the row.
    const settled = await raceCalls(ctx, { table: 'credit_accounts', where: { user_id: userId } }, [
      Array.from({ length: 5 }, () => () => submitJob(ctx.database, { spec, pricePerImage: 10 })),
    ]);
    const results = settled.map((r) => {
      if (r.status === 'rejected') throw r.reason;
      return r.value;
    });
    expect(results.filter((r) => r.created)).toHaveLength(1);
    expect(results.filter((r) => !r.created)).toEqual(Array.from({ length: 4 }, () => ({ jobId: spec.jobId, created: false, status: 'queued' })));
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 90, reserved: 10 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 90, reserved: 10 });
  });

  it("another user's submit of a taken job id is refused and writes nothing", async () => {
    const { spec } = await seedJob(ctx.database, { quantities: [1] });
    const intruder = uid('user');
    await grantCredits(ctx.database, intruder, 100);
    const theirInput = await inputAttachment(ctx.database, intruder);
    const before = await footprint(ctx.database, intruder);
    await expect(
      submitJob(ctx.database, { spec: makeSpec(intruder, [1], theirInput, spec.jobId ?? ''), pricePerImage: 10 }),
    ).rejects.toBeInstanceOf(JobOwnershipError);
    expect(await footprint(ctx.database, intruder)).toEqual(before);
    expect((await loadJob(ctx.database, spec.jobId ?? ''))?.userId).toBe(spec.userId);
  });

  it("refuses an unknown or another user's input attachment, naming the field, before reserving", async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const mine = await inputAttachment(ctx.database, userId);
    const theirs = await inputAttachment(ctx.database, uid('other'));
    const before = await footprint(ctx.database, userId);

    const base = makeSpec(userId, [1, 1, 1], mine);
    const withInput = (index: number, inputAttachId: string | null) => ({
      ...base,
      stages: base.stages.map((s) => (s.index === index ? { ...s, inputAttachId } : s)),
    });

    const foreign = await submitJob(ctx.database, { spec: withInput(1, theirs), pricePerImage: 10 }).catch((e: unknown) => e);
    expect(foreign).toBeInstanceOf(InputAttachmentError);
    expect(foreign).toMatchObject({ field: 'stages[1].mergedImageAttachId', attachId: theirs });
    expect((foreign as Error).message).toMatch(/does not belong/);

    const unknown = await submitJob(ctx.database, { spec: withInput(2, 'no-such-attachment'), pricePerImage: 10 }).catch((e: unknown) => e);
    expect(unknown).toMatchObject({ name: 'InputAttachmentError', field: 'stages[2].mergedImageAttachId' });
    expect((unknown as Error).message).toMatch(/does not exist/);

    const missing = await submitJob(ctx.database, { spec: withInput(0, null), pricePerImage: 10 }).catch((e: unknown) => e);
    expect(missing).toMatchObject({ name: 'InputAttachmentError', field: 'stages[0].mergedImageAttachId' });

    expect(await footprint(ctx.database, userId)).toEqual(before);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 100, reserved: 0 });
  });

  it('loadJob gives back the spec and, per slot, the filled attach id and the attempts used', async () => {
    const { userId, jobId, spec } = await seedJob(ctx.database, { quantities: [3, 2], pricePerImage: 5 });
    await markJobRunning(ctx.database, jobId);
    // Stage 0: slot 0 delivered on attempt 1; slot 1 failed once, then attempt 2 started and the worker "crashed".
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    const d00 = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 1));
    await finishAttempt(ctx.database, {
      jobId, stageIndex: 0, slotIndex: 0, attempt: 1, outcome: 'delivered',
      errorClass: null, httpStatus: 200, message: null, latencyMs: 120, usage: { promptTokens: 10, outputTokens: 1290, totalTokens: 1300 },
    });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 1 });
    await finishAttempt(ctx.database, {
      jobId, stageIndex: 0, slotIndex: 1, attempt: 1, outcome: 'failed',
      errorClass: 'overloaded', httpStatus: 503, message: 'model overloaded', latencyMs: 80, usage: null,
    });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 2 });
    // Stage 1: slot 1 delivered on its third attempt.
    for (const attempt of [1, 2, 3]) await startAttempt(ctx.database, { jobId, stageIndex: 1, slotIndex: 1, attempt });
    const d11 = await deliverSlot(ctx.database, deliveryOf(jobId, 1, 1, 3));
    // A repeated startAttempt (e.g. replayed after a crash) never lowers the count.
    await startAttempt(ctx.database, { jobId, stageIndex: 1, slotIndex: 1, attempt: 1 });

    const loaded = await loadJob(ctx.database, jobId);
    expect(loaded).toMatchObject({
      jobId,
      userId,
      productionId: 'prod-1',
      status: 'running',
      pricePerImage: 5,
      total: 5,
      delivered: 2,
      cancelRequested: false,
      credits: { reserved: 25, captured: 10, released: 0 },
    });
    expect(loaded?.spec).toEqual(spec);
    expect(loaded?.stages).toEqual([
      [
        { attachId: d00.attachId, attemptsUsed: 1, attemptsCharged: 1 },
        { attachId: null, attemptsUsed: 2, attemptsCharged: 2 },
        { attachId: null, attemptsUsed: 0, attemptsCharged: 0 },
      ],
      [
        { attachId: null, attemptsUsed: 0, attemptsCharged: 0 },
        { attachId: d11.attachId, attemptsUsed: 3, attemptsCharged: 3 },
      ],
    ]);

    const attempts = await ctx.database.db
      .selectFrom('attempts')
      .select(['stage_index', 'slot_index', 'attempt', 'outcome', 'error_class', 'http_status', 'latency_ms', 'total_tokens'])
      .where('job_id', '=', jobId)
      .orderBy('stage_index').orderBy('slot_index').orderBy('attempt')
      .execute();
    expect(attempts).toHaveLength(6);
    expect(attempts[0]).toEqual({ stage_index: 0, slot_index: 0, attempt: 1, outcome: 'delivered', error_class: null, http_status: 200, latency_ms: 120, total_tokens: 1300 });
    expect(attempts[1]).toMatchObject({ outcome: 'failed', error_class: 'overloaded', http_status: 503 });
    expect(attempts[2]).toMatchObject({ attempt: 2, outcome: 'started' });
  });

  it('loadJob of an unknown job is null', async () => {
    expect(await loadJob(ctx.database, 'no-such-job')).toBeNull();
  });

  it('requestCancel flags an unfinished job once it exists, and not a finished one', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    expect(await isCancelRequested(ctx.database, jobId)).toBe(false);
    expect(await requestCancel(ctx.database, jobId)).toBe(true);
    expect(await isCancelRequested(ctx.database, jobId)).toBe(true);
    expect((await loadJob(ctx.database, jobId))?.cancelRequested).toBe(true);
    expect(await requestCancel(ctx.database, 'no-such-job')).toBe(false);

    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
    expect((await loadJob(ctx.database, jobId))?.status).toBe('cancelled');
    const { jobId: other } = await seedJob(ctx.database, { quantities: [1] });
    await finishJob(ctx.database, other, await resultFromDatabase(ctx.database, other));
    expect(await requestCancel(ctx.database, other)).toBe(false);
  });

  it('markJobRunning refuses to revive a finished job', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    await expect(markJobRunning(ctx.database, jobId)).rejects.toThrow(/cannot run a job that is failed/);
    await expect(markJobRunning(ctx.database, 'no-such-job')).rejects.toThrow(/does not exist/);
  });

  it('a run stores the merged ids in stage then slot order and each stage shortfall, as the engine computed them', async () => {
    // A real run (runStoredJob: engine -> storage -> delivery transactions -> finishJob) with a scripted
    // provider: stage 0 slot 0 is always overloaded (its 2 attempts are its whole budget), stage 0 slot 1
    // answers late, so stage 1 delivers first; the stored order must still be stage 0, then stage 1.
    const root = await mkdtemp(join(tmpdir(), 'imagegen-jobs-run-'));
    try {
      const store = new FolderObjectStore({ root });
      const userId = uid('user');
      await grantCredits(ctx.database, userId, 100);
      const png = new Uint8Array(await sharp({ create: { width: 32, height: 18, channels: 3, background: '#406080' } }).png().toBuffer());
      const inputId = await importInputImage({ database: ctx.database, store }, userId, { bytes: png, mimeType: 'image/png', width: 32, height: 18 });
      const spec = makeSpec(userId, [2, 1], inputId);
      const jobId = spec.jobId ?? '';
      await submitJob(ctx.database, { spec, pricePerImage: 10 });
      const offline = new OfflineImageGenerator({ seed: 3 });
      const order: string[] = [];
      // Stage 0 slot 1 answers only after stage 1 has answered: an event, not a delay (a
      // delay of 150 ms was not enough on a loaded machine to keep stage 1 first).
      const stage1Answered = new ReplaySubject<void>(1);
      const generator: ImageGenerator = {
        generate: (request) => {
          const at = `${request.stageIndex}/${request.slotIndex}`;
          if (at === '0/0') return throwError(() => new PipelineError('overloaded', 'model overloaded (scripted)', { httpStatus: 503 }));
          const after = at === '0/1' ? stage1Answered.pipe(take(1)) : of(undefined);
          return after.pipe(
            switchMap(() => offline.generate(request)),
            tap(() => {
              order.push(at);
              if (at === '1/0') stage1Answered.next();
            }),
          );
        },
      };
      const events = await lastValueFrom(
        runStoredJob({ database: ctx.database, store, generator }, jobId, { backoff: { baseMs: 5, maxMs: 20 }, progressIntervalMs: 20, cancelPollMs: 50, maxAttemptsPerSlot: 2 }).pipe(toArray()),
      );
      expect(order).toEqual(['1/0', '0/1']);
      const finished = events.at(-1);
      expect(finished?.type).toBe('job:finished');

      // The rows: merged ids from the slots in stage then slot order, the shortfall of stage 0 from the engine.
      const filled = await ctx.database.db
        .selectFrom('slots').select(['stage_index', 'slot_index', 'attach_id'])
        .where('job_id', '=', jobId).where('attach_id', 'is not', null)
        .orderBy('stage_index').orderBy('slot_index').execute();
      expect(filled.map((s) => [s.stage_index, s.slot_index])).toEqual([[0, 1], [1, 0]]);
      const job = await ctx.database.db.selectFrom('jobs').select(['status', 'result_attach_ids']).where('id', '=', jobId).executeTakeFirstOrThrow();
      expect(job).toEqual({ status: 'partial', result_attach_ids: filled.map((s) => s.attach_id) });
      const stages = await ctx.database.db
        .selectFrom('stages')
        .select(['status', 'delivered', 'shortfall_count', 'shortfall_reason', 'shortfall_error_class'])
        .where('job_id', '=', jobId)
        .orderBy('stage_index')
        .execute();
      expect(stages).toEqual([
        { status: 'short', delivered: 1, shortfall_count: 1, shortfall_reason: 'budget_exhausted', shortfall_error_class: 'overloaded' },
        { status: 'completed', delivered: 1, shortfall_count: null, shortfall_reason: null, shortfall_error_class: null },
      ]);
      const attempts = await ctx.database.db.selectFrom('attempts').select(['attempt', 'outcome', 'error_class'])
        .where('job_id', '=', jobId).where('stage_index', '=', 0).where('slot_index', '=', 0).orderBy('attempt').execute();
      expect(attempts).toEqual([
        { attempt: 1, outcome: 'failed', error_class: 'overloaded' },
        { attempt: 2, outcome: 'failed', error_class: 'overloaded' },
      ]);
      // What the database answers afterwards (status, summary) is the same result.
      const stored = await readJobResult(ctx.database, jobId);
      expect(stored?.result).toMatchObject({
        status: 'partial',
        attachIds: filled.map((s) => s.attach_id),
        stages: [
          { index: 0, quantity: 2, delivered: 1, shortfall: { count: 1, reason: 'budget_exhausted', errorClass: 'overloaded' } },
          { index: 1, quantity: 1, delivered: 1, shortfall: null },
        ],
      });
      expect(stored?.credits).toEqual({ reserved: 30, captured: 20, released: 10 });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });

  it('finishJob stores the error it is given', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId), { error: 'stage 0 short by 1' });
    expect(await ctx.database.db.selectFrom('jobs').select(['status', 'error']).where('id', '=', jobId).executeTakeFirstOrThrow()).toEqual({ status: 'failed', error: 'stage 0 short by 1' });
  });

  it('createAttachment keeps every field', async () => {
    const userId = uid('user');
    const { attachId } = await createAttachment(ctx.database, { userId, storageKey: 'k/1.png', contentType: 'image/png', byteSize: 7, width: null, height: null });
    const { db } = ctx.database;
    expect(await db.selectFrom('attachments').select(['user_id', 'storage_key', 'content_type', 'byte_size', 'width', 'height', 'job_id']).where('id', '=', attachId).executeTakeFirst()).toEqual({
      user_id: userId, storage_key: 'k/1.png', content_type: 'image/png', byte_size: 7, width: null, height: null, job_id: null,
    });
  });
});
