/**
 * The job event log (`job_events`, migration 0006): each event appended in the transaction
 * that commits its fact, numbered per job under the job row lock (1, 2, 3, ... in commit
 * order, no holes), read back checked (`readJobEvents`) and followed live across
 * connections (`followJobEvents`).
 */
import { sql, type KyselyPlugin } from 'kysely';
import { lastValueFrom, take, toArray, VirtualTimeScheduler, type Observable, type Subscription } from 'rxjs';
import { expect, it } from 'vitest';
import {
  attemptFailedNotification,
  deliverSlot,
  finishAttempt,
  finishJob,
  InvalidJobEventError,
  JOB_EVENTS_CHANNEL,
  JobNotFoundError,
  readJobEvents,
  requestCancel,
  type AttemptFailedNotification,
  type Database,
  type JobEventEnvelope,
  type NotifiedEvent,
} from '../../src/db/index.js';
import type { AttemptFailedEvent } from '../../src/domain/events.js';
import { AttemptLog } from '../../src/sinks/attempt-log.js';
import { followJobEvents, type FollowJobEventsOptions } from '../../src/sources/job-events.js';
import { forEachDatabase, withSecondConnection } from '../support/databases.js';
import { raceCalls, raceTitle } from '../support/pg-race.js';
import { deliveryOf, resultFromDatabase, seedJob, until } from './fixtures.js';

/** The engine's `attempt:failed` for one attempt (a retryable overload). */
function failedEvent(jobId: string, stage: number, slot: number, attempt: number): AttemptFailedEvent {
  return {
    type: 'attempt:failed', jobId, at: 0, stage, slot, attempt, errorClass: 'overloaded', message: 'busy', httpStatus: 503,
    latencyMs: 12, providerLatencyMs: 10, willRetry: true, delayMs: 40,
  };
}

/** `finishAttempt` of a failed attempt, its event logged with it. */
function recordFailure(database: Database, jobId: string, stage: number, slot: number, attempt: number): Promise<void> {
  return finishAttempt(database, {
    jobId, stageIndex: stage, slotIndex: slot, attempt, outcome: 'failed', errorClass: 'overloaded', httpStatus: 503, message: 'busy', latencyMs: 12, usage: null,
    event: attemptFailedNotification(failedEvent(jobId, stage, slot, attempt)),
  });
}

/** A job's whole log, read in one go. */
const wholeLog = (database: Database, jobId: string) => readJobEvents(database, jobId, { limit: 10_000 });

/** Subscribes and records; `done` settles when the stream completes or errors. */
function record(events$: Observable<JobEventEnvelope>) {
  const received: JobEventEnvelope[] = [];
  let subscription: Subscription | undefined;
  const done = new Promise<void>((resolve, reject) => {
    subscription = events$.subscribe({ next: (e) => received.push(e), complete: resolve, error: reject });
  });
  return { received, done, unsubscribe: () => subscription?.unsubscribe() };
}

/** `database` whose LISTENs are counted: `active()` is how many are in place now. */
function countingListens(database: Database): { readonly database: Database; active(): number } {
  let active = 0;
  return {
    database: {
      ...database,
      async listen(channel, onPayload) {
        const stop = await database.listen(channel, onPayload);
        active += 1;
        return async () => {
          await stop();
          active -= 1;
        };
      },
    },
    active: () => active,
  };
}

/** Notifications must not drive these tests' verdicts by the poll: an hour, unless a test asks for it. */
const NO_POLL: FollowJobEventsOptions = { pollMs: 3_600_000 };

forEachDatabase('job event log', (ctx) => {
  const withReader = <T>(fn: (reader: Database) => Promise<T>): Promise<T> => withSecondConnection(ctx, fn);

  it(raceTitle(ctx.kind, 'concurrent deliveries and failures number the events 1..n in commit order; the stage ends and job:finished come last'), async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4, 2] });
    const deliveries = [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1]].map(([stage, slot]) => () => deliverSlot(ctx.database, deliveryOf(jobId, stage!, slot!, 2)).then(() => undefined));
    const failures = [[0, 0], [0, 3], [1, 1]].map(([stage, slot]) => () => recordFailure(ctx.database, jobId, stage!, slot!, 1));
    // PostgreSQL: all nine wait inside their transactions on the job row, then go at once.
    const settled = await raceCalls(ctx, { table: 'jobs', where: { id: jobId } }, [[...deliveries, ...failures]]);
    expect(settled.filter((s) => s.status === 'rejected')).toEqual([]);
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));

    const log = await wholeLog(ctx.database, jobId);
    expect(log.map((e) => e.seq)).toEqual(Array.from({ length: 12 }, (_, i) => i + 1));
    const events = log.map((e) => e.event);
    const delivered = events.filter((e) => e.type === 'slot:delivered');
    // One per delivered slot, with the attach id the slot holds.
    expect(delivered.map((e) => `${e.stage}.${e.slot}#${e.attempt}`).sort()).toEqual(['0.0#2', '0.1#2', '0.2#2', '0.3#2', '1.0#2', '1.1#2']);
    const slots = await ctx.database.db.selectFrom('slots').select(['stage_index', 'slot_index', 'attach_id']).where('job_id', '=', jobId).execute();
    for (const e of delivered) expect(slots.find((s) => s.stage_index === e.stage && s.slot_index === e.slot)?.attach_id).toBe(e.attachId);
    // The counts each delivery committed rise by one along the numbers: the numbers are the commit order.
    expect(delivered.map((e) => e.progress)).toEqual([1, 2, 3, 4, 5, 6].map((n) => ({ delivered: n, total: 6 })));
    for (const stage of [0, 1]) {
      const progress = delivered.filter((e) => e.stage === stage).map((e) => e.stageProgress);
      expect(progress).toEqual(progress.map((_, i) => ({ delivered: i + 1, total: stage === 0 ? 4 : 2 })));
    }
    // One per failure, exactly as notified.
    const failed = events.filter((e): e is AttemptFailedNotification => e.type === 'attempt:failed');
    expect(failed.map((e) => `${e.stage}.${e.slot}#${e.attempt}`).sort()).toEqual(['0.0#1', '0.3#1', '1.1#1']);
    for (const e of failed) expect(e).toEqual(attemptFailedNotification(failedEvent(jobId, e.stage, e.slot, 1)));
    // The end: each stage in order, then job:finished, last.
    expect(events.slice(-3)).toEqual([
      { type: 'stage:completed', jobId, stage: 0, quantity: 4, delivered: 4 },
      { type: 'stage:completed', jobId, stage: 1, quantity: 2, delivered: 2 },
      { type: 'job:finished', jobId, status: 'completed', result: { totalImages: 6, deliveredImages: 6 } },
    ]);
    const job = await ctx.database.db.selectFrom('jobs').select('event_seq').where('id', '=', jobId).executeTakeFirstOrThrow();
    expect(job.event_seq).toBe(12);
  });

  it('a rolled-back delivery takes no number, a duplicate logs nothing: the log has no holes', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    // A trigger that fails this job's stage counter update, after the delivery's other writes.
    await sql`create or replace function fail_job_event_stage() returns trigger language plpgsql as $$
      begin
        if new.job_id = ${sql.lit(jobId)} then raise exception 'injected stage failure'; end if;
        return new;
      end $$`.execute(ctx.database.db);
    await sql`create or replace trigger fail_job_event_stage before update of delivered on stages
      for each row execute function fail_job_event_stage()`.execute(ctx.database.db);
    try {
      await expect(deliverSlot(ctx.database, deliveryOf(jobId, 0, 0))).rejects.toThrow(/injected stage failure/);
    } finally {
      await sql`drop trigger fail_job_event_stage on stages`.execute(ctx.database.db);
    }
    const first = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    expect(await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 2))).toEqual({ attachId: first.attachId, duplicate: true });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    const log = await wholeLog(ctx.database, jobId);
    expect(log.map((e) => [e.seq, e.event.type, e.event.type === 'slot:delivered' ? e.event.slot : null])).toEqual([
      [1, 'slot:delivered', 0],
      [2, 'slot:delivered', 1],
    ]);
  });

  it('a failure is logged once per attempt, never for an abandoned attempt, and not after job:finished', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await recordFailure(ctx.database, jobId, 0, 0, 1);
    await recordFailure(ctx.database, jobId, 0, 0, 1);
    const event = attemptFailedNotification(failedEvent(jobId, 0, 1, 1));
    const base = { jobId, stageIndex: 0, slotIndex: 1, attempt: 1, errorClass: 'cancelled', httpStatus: null, message: 'stopped', latencyMs: 1, usage: null } as const;
    await expect(finishAttempt(ctx.database, { ...base, outcome: 'abandoned', event })).rejects.toBeInstanceOf(TypeError);
    await expect(finishAttempt(ctx.database, { ...base, attempt: 2, outcome: 'failed', event })).rejects.toThrow(/is for .*#1, not .*#2/);
    expect((await wholeLog(ctx.database, jobId)).map((e) => e.event.type)).toEqual(['attempt:failed']);

    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    // A runner that lost its lease still writes its attempt's end: the row, but no event after the end.
    await recordFailure(ctx.database, jobId, 0, 1, 1);
    const outcome = await ctx.database.db
      .selectFrom('attempts').select('outcome').where('job_id', '=', jobId).where('slot_index', '=', 1).where('attempt', '=', 1).executeTakeFirstOrThrow();
    expect(outcome.outcome).toBe('failed');
    const log = await wholeLog(ctx.database, jobId);
    expect(log.map((e) => e.event.type)).toEqual(['attempt:failed', 'stage:short', 'job:finished']);
    expect(log[1]?.event).toEqual({ type: 'stage:short', jobId, stage: 0, quantity: 2, delivered: 0, reason: 'budget_exhausted', errorClass: 'overloaded' });
  });

  it('the attempt log logs a failure with its row, and an attempt a shutdown aborted (abandoned) without one', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const log = new AttemptLog(ctx.database, undefined);
    log.record(failedEvent(jobId, 0, 0, 1), false);
    log.record({ ...failedEvent(jobId, 0, 1, 1), errorClass: 'cancelled', willRetry: false, delayMs: 0 }, true);
    await log.flush();
    const outcomes = await ctx.database.db.selectFrom('attempts').select(['slot_index', 'outcome']).where('job_id', '=', jobId).orderBy('slot_index').execute();
    expect(outcomes).toEqual([
      { slot_index: 0, outcome: 'failed' },
      { slot_index: 1, outcome: 'abandoned' },
    ]);
    expect((await wholeLog(ctx.database, jobId)).map((e) => e.event)).toEqual([attemptFailedNotification(failedEvent(jobId, 0, 0, 1))]);
  });

  it('a cancel request is logged while the job runs, nothing once it ended', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    expect(await requestCancel(ctx.database, jobId)).toBe(true);
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
    expect(await requestCancel(ctx.database, jobId)).toBe(false);
    expect((await wholeLog(ctx.database, jobId)).map((e) => e.event)).toEqual([
      { type: 'job:cancel-requested', jobId },
      { type: 'stage:short', jobId, stage: 0, quantity: 1, delivered: 0, reason: 'cancelled', errorClass: null },
      { type: 'job:finished', jobId, status: 'cancelled', result: { totalImages: 1, deliveredImages: 0 } },
    ]);
  });

  it('readJobEvents reads pages after a seq; pages chained by their last seq give the whole log once', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [5] });
    for (const slot of [0, 1, 2, 3, 4]) await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    const all = await wholeLog(ctx.database, jobId);
    expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);

    const pages: JobEventEnvelope[][] = [];
    for (let afterSeq = 0; ; ) {
      const page = await readJobEvents(ctx.database, jobId, { afterSeq, limit: 3 });
      pages.push(page);
      if (page.length < 3) break;
      afterSeq = page.at(-1)!.seq;
    }
    expect(pages.map((p) => p.map((e) => e.seq))).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
    expect(pages.flat()).toEqual(all);
    expect(await readJobEvents(ctx.database, jobId, { afterSeq: 5 })).toEqual(all.slice(5));
    expect(await readJobEvents(ctx.database, jobId, { afterSeq: 7 })).toEqual([]);
    expect(await readJobEvents(ctx.database, 'no-such-job')).toEqual([]);
    await expect(readJobEvents(ctx.database, jobId, { afterSeq: -1 })).rejects.toBeInstanceOf(RangeError);
    await expect(readJobEvents(ctx.database, jobId, { limit: 0 })).rejects.toBeInstanceOf(RangeError);
  });

  it('a stored event that does not check is refused with InvalidJobEventError, not skipped', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await sql`update jobs set event_seq = 2 where id = ${jobId}`.execute(ctx.database.db);
    await sql`insert into job_events (job_id, seq, type, payload)
      values (${jobId}, 2, 'slot:delivered', cast(${JSON.stringify({ type: 'slot:delivered', jobId, attachId: 'no-counts' })} as jsonb))`.execute(ctx.database.db);
    expect(await readJobEvents(ctx.database, jobId, { limit: 1 })).toHaveLength(1);
    const error = await readJobEvents(ctx.database, jobId).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InvalidJobEventError);
    expect(error).toMatchObject({ jobId, seq: 2, type: 'slot:delivered' });
  });

  it('followJobEvents on an ended job emits its whole log from 0, or what follows afterSeq, then completes', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    for (const slot of [0, 1]) await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot));
    await recordFailure(ctx.database, jobId, 0, 2, 1);
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    const all = await wholeLog(ctx.database, jobId);
    expect(all.map((e) => e.event.type)).toEqual(['slot:delivered', 'slot:delivered', 'attempt:failed', 'stage:short', 'job:finished']);
    await withReader(async (reader) => {
      expect(await lastValueFrom(followJobEvents(reader, jobId, NO_POLL).pipe(toArray()))).toEqual(all);
      expect(await lastValueFrom(followJobEvents(reader, jobId, { ...NO_POLL, afterSeq: 2 }).pipe(toArray()))).toEqual(all.slice(2));
      // Small pages: the follower reads on until a page is short.
      expect(await lastValueFrom(followJobEvents(reader, jobId, { ...NO_POLL, afterSeq: 1, pageSize: 2 }).pipe(toArray()))).toEqual(all.slice(1));
      expect(await lastValueFrom(followJobEvents(reader, jobId, { ...NO_POLL, afterSeq: 5 }).pipe(toArray()))).toEqual([]);
    });
  });

  it('followJobEvents follows a running job from another connection as its events commit, and completes after job:finished', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await withReader(async (reader) => {
      const follow = record(followJobEvents(reader, jobId, NO_POLL));
      await until(() => follow.received.length === 1);
      // Each write is waited for at the reader: it comes by its notification (the poll is an hour away).
      await recordFailure(ctx.database, jobId, 0, 1, 1);
      await until(() => follow.received.length === 2);
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1, 2));
      await until(() => follow.received.length === 3);
      await requestCancel(ctx.database, jobId);
      await until(() => follow.received.length === 4);
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
      await follow.done;
      expect(follow.received).toEqual(await wholeLog(ctx.database, jobId));
      expect(follow.received.map((e) => e.event.type)).toEqual(['slot:delivered', 'attempt:failed', 'slot:delivered', 'job:cancel-requested', 'stage:short', 'job:finished']);
    });
  });

  it('followJobEvents resumed after an unsubscribe mid-job, from the last seq received, misses nothing and repeats nothing', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    await withReader(async (reader) => {
      const first = record(followJobEvents(reader, jobId, NO_POLL));
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
      await until(() => first.received.length === 2);
      first.unsubscribe();
      // While nobody follows: a failure, a delivery.
      await recordFailure(ctx.database, jobId, 0, 2, 1);
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 2, 2));
      const resumed = record(followJobEvents(reader, jobId, { ...NO_POLL, afterSeq: first.received.at(-1)!.seq }));
      await until(() => resumed.received.length === 2);
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 3));
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
      await resumed.done;
      const all = await wholeLog(ctx.database, jobId);
      expect(all.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6, 7]);
      expect(first.received).toEqual(all.slice(0, 2));
      expect(resumed.received).toEqual(all.slice(2));
      expect(resumed.received.at(-1)?.event).toEqual({ type: 'job:finished', jobId, status: 'completed', result: { totalImages: 4, deliveredImages: 4 } });
    });
  });

  it('followJobEvents completes when the job ends between its status read and its events read (job:finished read, no later notice)', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await withReader(async (reader) => {
      // Deaf (no notifications) and no poll: only the follower's own looks can end it. The job is
      // finished right after the follower's first status read answers "not ended", before its events read.
      let finishing: Promise<void> | undefined;
      const plugin: KyselyPlugin = {
        transformQuery: (args) => args.node,
        transformResult: async (args) => {
          const row = args.result.rows[0] as { status?: unknown } | undefined;
          if (finishing === undefined && (row?.status === 'queued' || row?.status === 'running')) {
            finishing = finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId)).then(() => undefined);
            await finishing;
          }
          return args.result;
        },
      };
      const racing: Database = { ...reader, db: reader.db.withPlugin(plugin), listen: (channel) => reader.listen(channel, () => {}) };
      const follow = record(followJobEvents(racing, jobId, NO_POLL));
      const ended = await Promise.race([follow.done.then(() => 'completed'), new Promise((r) => setTimeout(() => r('still open after 10 s'), 10_000))]);
      expect(finishing, 'the race was staged').toBeDefined();
      expect(ended).toBe('completed');
      follow.unsubscribe();
      expect(follow.received).toEqual(await wholeLog(ctx.database, jobId));
      expect(follow.received.at(-1)?.event.type).toBe('job:finished');
    });
  });

  it('followJobEvents finds, by its periodic read, events whose notifications never came', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await withReader(async (reader) => {
      // A listener that hears nothing (like PGlite in another process) and a clock the test moves:
      // after the first read, only a tick of the poll can make the follower read again.
      const deaf: Database = { ...reader, listen: (channel) => reader.listen(channel, () => {}) };
      const clock = new VirtualTimeScheduler();
      const tick = () => {
        clock.maxFrames = clock.frame + 1000;
        clock.flush();
      };
      const follow = record(followJobEvents(deaf, jobId, { pollMs: 1000, scheduler: clock }));
      await until(() => follow.received.length === 1);
      // Appended the way the ops do, but with no NOTIFY.
      const cancel: NotifiedEvent = { type: 'job:cancel-requested', jobId };
      await ctx.database.db.transaction().execute(async (trx) => {
        await sql`update jobs set event_seq = event_seq + 1 where id = ${jobId}`.execute(trx);
        await sql`insert into job_events (job_id, seq, type, payload) values (${jobId}, 2, ${cancel.type}, cast(${JSON.stringify(cancel)} as jsonb))`.execute(trx);
      });
      tick();
      await until(() => follow.received.length === 2);
      expect(follow.received[1]).toEqual({ seq: 2, event: cancel });
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
      tick();
      await follow.done;
      expect(follow.received).toEqual(await wholeLog(ctx.database, jobId));
      expect(follow.received.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    });
  });

  it('followJobEvents skips a job events notification that does not decode, tells the logger, and goes on', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await withReader(async (reader) => {
      const warned: unknown[][] = [];
      const listens = countingListens(reader);
      const follow = record(followJobEvents(listens.database, jobId, { ...NO_POLL, logger: { warn: (...args: unknown[]) => void warned.push(args) } }));
      await until(() => listens.active() === 1);
      await ctx.database.notify(JOB_EVENTS_CHANNEL, 'not json');
      await until(() => warned.length === 1);
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
      await follow.done;
      expect(follow.received.map((e) => e.event.type)).toEqual(['stage:short', 'job:finished']);
      expect(warned[0]).toEqual([expect.objectContaining({ channel: JOB_EVENTS_CHANNEL, followedJobId: jobId }), 'skipped a job events notification that is not valid']);
    });
  });

  it('followJobEvents errors with JobNotFoundError for an unknown job', async () => {
    await withReader(async (reader) => {
      await expect(lastValueFrom(followJobEvents(reader, 'no-such-job', NO_POLL))).rejects.toBeInstanceOf(JobNotFoundError);
    });
  });

  it('followJobEvents stops listening when it completes and when it is unsubscribed', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await withReader(async (reader) => {
      const listens = countingListens(reader);
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
      // Unsubscribed (by take) after the first event, which it reads once it listens.
      expect(await lastValueFrom(followJobEvents(listens.database, jobId, NO_POLL).pipe(take(1)))).toMatchObject({ seq: 1 });
      await until(() => listens.active() === 0);

      const follow = record(followJobEvents(listens.database, jobId, NO_POLL));
      await until(() => follow.received.length === 1 && listens.active() === 1);
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
      await follow.done;
      await until(() => listens.active() === 0);
      expect(follow.received.map((e) => e.seq)).toEqual([1, 2, 3]);
    });
  });
});
