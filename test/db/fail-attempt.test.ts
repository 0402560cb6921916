/**
 * A failed attempt's record with its event in one round trip (`fail_attempt`, migration 0014,
 * called by `finishAttempt`): the row, the event numbered from the job row and announced as
 * `appendJobEvents` announces it, the same on a job with a webhook (whose outbox gets no row
 * for a failure), and the row's every fact as `finishAttempts` writes a record's.
 */
import { sql } from 'kysely';
import { expect, it } from 'vitest';
import {
  attemptFailedNotification,
  deliverSlot,
  finishAttempt,
  finishAttempts,
  grantCredits,
  JOB_EVENTS_CHANNEL,
  readJobEvents,
  startAttempt,
  submitJob,
  type Database,
  type FinishAttemptOptions,
} from '../../src/db/index.js';
import { encodeJobEventsAppended } from '../../src/db/notifications.js';
import type { AttemptFailedEvent } from '../../src/domain/events.js';
import { forEachDatabase } from '../support/databases.js';
import { Statements } from '../support/statements.js';
import { deliveryOf, inputAttachment, makeSpec, seedJob, uid, until } from './fixtures.js';

const failedEvent = (jobId: string, slot: number, attempt: number): AttemptFailedEvent => ({
  type: 'attempt:failed', jobId, at: 0, stage: 0, slot, attempt, errorClass: 'safety_blocked', message: 'blocked by the safety filter', httpStatus: 200,
  latencyMs: 75, providerLatencyMs: 70, willRetry: true, delayMs: 40, usage: { promptTokens: 12, outputTokens: 0, totalTokens: 12 },
});

/** A failed attempt's record, every column given, with or without its event. */
const failure = (jobId: string, slot: number, attempt: number, withEvent: boolean): FinishAttemptOptions => ({
  jobId, stageIndex: 0, slotIndex: slot, attempt, outcome: 'failed', errorClass: 'safety_blocked', httpStatus: 200, message: 'blocked by the safety filter',
  latencyMs: 75.4, usage: { promptTokens: 12, outputTokens: 0, totalTokens: 12, thoughtsTokens: 3, imageCount: 0 },
  cost: { model: 'gemini-2.5-flash-image', usd: 0.0000036, possiblyBilledUsd: 0 },
  event: withEvent ? attemptFailedNotification(failedEvent(jobId, slot, attempt)) : undefined,
});

/** An attempt's row without its timestamps. */
async function attemptRow(database: Database, jobId: string, slot: number, attempt: number) {
  const { rows } = await sql<Record<string, unknown>>`select * from attempts where job_id = ${jobId} and slot_index = ${slot} and attempt = ${attempt}`.execute(database.db);
  const row = rows[0];
  if (row === undefined) return undefined;
  const { started_at: _started, finished_at: finished, job_id: _job, ...rest } = row;
  return { ...rest, finished: finished instanceof Date };
}

forEachDatabase('a failed attempt with its event in one round trip', (ctx) => {
  it('one statement: the row as finishAttempts writes it, the event numbered after the last, its NOTIFY as appendJobEvents sends it', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    const payloads: string[] = [];
    const unlisten = await ctx.database.listen(JOB_EVENTS_CHANNEL, (payload) => {
      if (payload.includes(jobId)) payloads.push(payload);
    });
    try {
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
      for (const slot of [1, 2]) await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: slot, attempt: 1 });
      const statements = new Statements();
      await finishAttempt({ ...ctx.database, db: ctx.database.db.withPlugin(statements) }, failure(jobId, 1, 1, true));
      expect(statements.count).toBe(1);
      // The row: what the record without its event writes (the batch path) for the same facts.
      await finishAttempts(ctx.database, [failure(jobId, 2, 1, false)]);
      const logged = await attemptRow(ctx.database, jobId, 1, 1);
      expect(logged).toEqual({ ...(await attemptRow(ctx.database, jobId, 2, 1)), slot_index: 1 });
      expect(logged).toMatchObject({ outcome: 'failed', error_class: 'safety_blocked', http_status: 200, latency_ms: 75, prompt_tokens: 12, thoughts_tokens: 3, image_count: 0, model: 'gemini-2.5-flash-image', cost_usd: 0.0000036, possibly_billed_usd: null, finished: true });
      const events = await readJobEvents(ctx.database, jobId, { limit: 100 });
      expect(events.map((e) => [e.seq, e.event.type])).toEqual([[1, 'slot:delivered'], [2, 'attempt:failed']]);
      expect(events[1]!.event).toEqual(attemptFailedNotification(failedEvent(jobId, 1, 1)));
      await until(() => payloads.length >= 2);
      expect(payloads).toEqual([encodeJobEventsAppended({ jobId, seq: 1 }), encodeJobEventsAppended({ jobId, seq: 2 })]);
    } finally {
      await unlisten();
    }
  });

  it('a job with a webhook: the same one statement; its outbox gets no row for a failure', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const spec = { ...makeSpec(userId, [2], await inputAttachment(ctx.database, userId)), webhook: { url: 'https://hooks.example.com/x', events: ['image.delivered' as const, 'job.finished' as const] } };
    const { jobId } = await submitJob(ctx.database, { spec, pricePerImage: 1 });
    await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
    const statements = new Statements();
    await finishAttempt({ ...ctx.database, db: ctx.database.db.withPlugin(statements) }, failure(jobId, 0, 1, true));
    expect(statements.count).toBe(1);
    expect((await readJobEvents(ctx.database, jobId, { limit: 100 })).map((e) => e.event.type)).toEqual(['attempt:failed']);
    expect(await ctx.database.db.selectFrom('webhook_deliveries').select('id').where('job_id', '=', jobId).execute()).toEqual([]);
    // A delivery of the same job still writes its outbox row, numbered after the failure.
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    expect(await ctx.database.db.selectFrom('webhook_deliveries').select(['seq', 'event_type']).where('job_id', '=', jobId).execute()).toEqual([{ seq: 2, event_type: 'image.delivered' }]);
  });

  it('an attempt of a job that does not exist fails the call and writes nothing', async () => {
    const jobId = uid('job');
    await expect(finishAttempt(ctx.database, failure(jobId, 0, 1, true))).rejects.toThrow();
    expect(await attemptRow(ctx.database, jobId, 0, 1)).toBeUndefined();
    expect(await readJobEvents(ctx.database, jobId, { limit: 10 })).toEqual([]);
  });
});
