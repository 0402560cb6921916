import { lastValueFrom, Subject, tap, toArray, VirtualTimeScheduler } from 'rxjs';
import { expect, it } from 'vitest';
import type { PipelineEvent, SlotDeliveredEvent } from '../../src/domain/events.js';
import { appendProgress, deliverSlot, finishJob, getProgress, MAX_NOTIFY_PAYLOAD_BYTES, PROGRESS_CHANNEL, toNotifiedEvent, encodeNotification } from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { progressWriter } from '../../src/sinks/progress-writer.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, resultFromDatabase, seedJob, until } from './fixtures.js';

function delivered(jobId: string, stage: number, slot: number, attachId: string, n: number, total: number): SlotDeliveredEvent {
  return {
    type: 'slot:delivered', jobId, at: 0, stage, slot, attempt: 1, attachId, latencyMs: 10, providerLatencyMs: 8, usage: null,
    stageProgress: { delivered: n, total }, progress: { delivered: n, total },
  };
}

/** Delivers every slot of stage 0 in `order`, returning the matching events in that (delivery) order. */
async function deliverInOrder(database: Database, jobId: string, order: readonly number[]): Promise<SlotDeliveredEvent[]> {
  const events: SlotDeliveredEvent[] = [];
  for (const slot of order) {
    const { attachId } = await deliverSlot(database, deliveryOf(jobId, 0, slot));
    events.push(delivered(jobId, 0, slot, attachId, events.length + 1, order.length));
  }
  return events;
}

function recorder(database: Database) {
  const writes: string[][] = [];
  const published: string[] = [];
  const state = { landed: 0 };
  return {
    writes,
    published,
    state,
    writeProgress: async (jobId: string, ids: readonly string[]) => {
      writes.push([...ids]);
      await appendProgress(database, jobId, ids);
      state.landed += 1;
    },
    publish: async (payload: string) => {
      published.push(payload);
      await database.notify(PROGRESS_CHANNEL, payload);
    },
  };
}

forEachDatabase('progress writer', (ctx) => {
  it('coalesces writes to one per interval, appends only new ids in delivery order, and flushes the last state', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [11] });
    const events = await deliverInOrder(ctx.database, jobId, [3, 0, 7, 1, 10, 2, 9, 4, 8, 5, 6]);
    const ids = events.map((e) => e.attachId);
    const scheduler = new VirtualTimeScheduler();
    const rec = recorder(ctx.database);
    const source = new Subject<PipelineEvent>();
    const passed = lastValueFrom(source.pipe(progressWriter(ctx.database, { scheduler, intervalMs: 250, ...rec }), toArray()));

    const started: PipelineEvent = { type: 'job:started', jobId, at: 0, totalImages: 11, deliveredImages: 0, stages: [{ index: 0, quantity: 11, delivered: 0 }] };
    source.next(started);
    // t=0: ten deliveries in one burst -> the first is written at once, the rest wait for the window.
    for (const e of events.slice(0, 10)) source.next(e);
    expect(rec.writes).toEqual([[ids[0]]]);
    scheduler.flush(); // t=250: trailing write of the other nine, then the window closes at t=500.
    // The trailing write queues behind the (real, asynchronous) first one; let both land.
    await until(() => rec.writes.length === 2);
    expect(rec.writes[1]).toEqual(ids.slice(1, 10));
    // t=500: one more delivery, written at once (leading edge of a new window).
    const last = events[10] as SlotDeliveredEvent;
    source.next(last);
    source.next({ type: 'stage:completed', jobId, at: 500, stage: 0, quantity: 11, delivered: 11 });
    source.complete();
    scheduler.flush();

    const out = await passed;
    expect(out).toHaveLength(13); // every event passes through unchanged
    expect(out[1]).toBe(events[0]);
    expect(rec.writes).toEqual([[ids[0]], ids.slice(1, 10), [ids[10]]]);
    expect(await getProgress(ctx.database, jobId)).toEqual({ count: 11, attachIds: ids });
    // One notification per event; ids and counts only.
    expect(rec.published).toHaveLength(13);
    expect(JSON.parse(rec.published[5] ?? '')).toEqual({
      type: 'slot:delivered', jobId, stage: 0, slot: events[4]?.slot, attempt: 1, attachId: ids[4],
      stageProgress: { delivered: 5, total: 11 }, progress: { delivered: 5, total: 11 },
    });
  });

  it('writes at most once per interval even when each write lands at once (paced deliveries)', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    const events = await deliverInOrder(ctx.database, jobId, [0, 1, 2, 3]);
    const ids = events.map((e) => e.attachId);
    const scheduler = new VirtualTimeScheduler();
    const rec = recorder(ctx.database);
    const source = new Subject<PipelineEvent>();
    const passed = lastValueFrom(source.pipe(progressWriter(ctx.database, { scheduler, intervalMs: 250, ...rec }), toArray()));
    /** Runs virtual time up to `frame`, then lets the (real) writes it started land. */
    const advanceTo = async (frame: number) => {
      scheduler.maxFrames = frame;
      scheduler.flush();
      await new Promise((r) => setTimeout(r, 30));
      await until(() => rec.state.landed === rec.writes.length);
    };
    const at = (frame: number, event: PipelineEvent | 'complete') =>
      scheduler.schedule(() => (event === 'complete' ? source.complete() : source.next(event)), frame);

    at(0, events[0] as PipelineEvent);
    at(100, events[1] as PipelineEvent);
    at(200, events[2] as PipelineEvent);
    at(300, events[3] as PipelineEvent);
    at(320, 'complete');

    await advanceTo(0);
    expect(rec.writes).toEqual([[ids[0]]]); // leading edge
    await advanceTo(249);
    expect(rec.writes).toEqual([[ids[0]]]); // t=100 and t=200 wait for the window, although the first write has landed
    await advanceTo(250);
    expect(rec.writes).toEqual([[ids[0]], [ids[1], ids[2]]]); // trailing edge
    await advanceTo(499);
    expect(rec.writes).toHaveLength(2); // t=300 falls into the window the trailing write opened
    await advanceTo(Infinity);
    await passed;
    expect(rec.writes).toEqual([[ids[0]], [ids[1], ids[2]], [ids[3]]]); // the last state, flushed
    expect(await getProgress(ctx.database, jobId)).toEqual({ count: 4, attachIds: ids });
  });

  it('with no more events, the trailing write still lands (real scheduler, short interval)', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [30] });
    const events = await deliverInOrder(ctx.database, jobId, Array.from({ length: 30 }, (_, i) => 29 - i));
    const rec = recorder(ctx.database);
    const source = new Subject<PipelineEvent>();
    const passed = lastValueFrom(source.pipe(progressWriter(ctx.database, { intervalMs: 20, ...rec }), toArray()));
    for (const e of events) source.next(e);
    source.complete();
    await passed;
    expect(rec.writes).toHaveLength(2);
    expect(await getProgress(ctx.database, jobId)).toEqual({ count: 30, attachIds: events.map((e) => e.attachId) });
  });

  it('a replayed batch appends nothing twice, and finishJob completes a list the writer never flushed', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    const events = await deliverInOrder(ctx.database, jobId, [2, 0, 1]);
    const ids = events.map((e) => e.attachId);
    await appendProgress(ctx.database, jobId, ids.slice(0, 1));
    await appendProgress(ctx.database, jobId, ids.slice(0, 1));
    expect(await getProgress(ctx.database, jobId)).toEqual({ count: 1, attachIds: ids.slice(0, 1) });
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    expect(await getProgress(ctx.database, jobId)).toEqual({ count: 3, attachIds: ids });
  });

  it('writes several jobs independently', async () => {
    const a = await seedJob(ctx.database, { quantities: [2] });
    const b = await seedJob(ctx.database, { quantities: [2] });
    const ea = await deliverInOrder(ctx.database, a.jobId, [0, 1]);
    const eb = await deliverInOrder(ctx.database, b.jobId, [1, 0]);
    const scheduler = new VirtualTimeScheduler();
    const rec = recorder(ctx.database);
    const source = new Subject<PipelineEvent>();
    const passed = lastValueFrom(source.pipe(progressWriter(ctx.database, { scheduler, ...rec }), toArray()));
    for (const e of [ea[0], eb[0], ea[1], eb[1]]) source.next(e as PipelineEvent);
    source.complete();
    scheduler.flush();
    await passed;
    expect(rec.writes).toHaveLength(4); // a leading + a trailing write per job
    expect((await getProgress(ctx.database, a.jobId))?.attachIds).toEqual(ea.map((e) => e.attachId));
    expect((await getProgress(ctx.database, b.jobId))?.attachIds).toEqual(eb.map((e) => e.attachId));
  });
});

it('notification payloads stay under the NOTIFY limit and job:finished is left to finishJob', () => {
  const failed: PipelineEvent = {
    type: 'attempt:failed', jobId: 'j', at: 0, stage: 0, slot: 0, attempt: 1, errorClass: 'invalid_request',
    message: 'x'.repeat(100_000), httpStatus: 400, latencyMs: 5, providerLatencyMs: 5, willRetry: false, delayMs: 0,
  };
  const notified = toNotifiedEvent(failed);
  expect(notified).not.toBeNull();
  expect(Buffer.byteLength(encodeNotification(notified!), 'utf8')).toBeLessThan(MAX_NOTIFY_PAYLOAD_BYTES);
  expect(toNotifiedEvent({ type: 'job:finished', jobId: 'j', at: 0, status: 'completed', attachIds: [], result: { jobId: 'j', status: 'completed', totalImages: 0, deliveredImages: 0, attachIds: [], stages: [] } })).toBeNull();
  expect(() => encodeNotification({ type: 'job:cancel-requested', jobId: 'j'.repeat(9000) })).toThrow(RangeError);
});

it('holds job:finished back until every notification of its job is published (a watcher never sees the end first)', async () => {
  const published: string[] = [];
  const releases: (() => void)[] = [];
  // Each publish lands only when the test lets it: the notifications are slow.
  const publish = (payload: string) =>
    new Promise<void>((resolve) => {
      releases.push(() => {
        published.push((JSON.parse(payload) as { type: string }).type);
        resolve();
      });
    });
  const jobId = 'j-order';
  const finished: PipelineEvent = {
    type: 'job:finished', jobId, at: 0, status: 'completed', attachIds: ['a0', 'a1'],
    result: { jobId, status: 'completed', totalImages: 2, deliveredImages: 2, attachIds: ['a0', 'a1'], stages: [] },
  };
  const source = new Subject<PipelineEvent>();
  const passed: string[] = [];
  // No database is touched: publish and writeProgress are given.
  const done = lastValueFrom(
    source.pipe(
      progressWriter({} as Database, { publish, writeProgress: async () => {}, intervalMs: 0 }),
      tap((event) => passed.push(`${event.type} after ${published.length} published`)),
      toArray(),
    ),
  );

  source.next(delivered(jobId, 0, 0, 'a0', 1, 2));
  source.next(delivered(jobId, 0, 1, 'a1', 2, 2));
  source.next(finished);
  source.complete();
  await until(() => releases.length === 1);
  releases.shift()?.();
  await until(() => releases.length === 1);
  // One notification is still out: job:finished has not passed yet.
  expect(passed).toEqual(['slot:delivered after 0 published', 'slot:delivered after 0 published']);
  releases.shift()?.();
  await done;
  expect(published).toEqual(['slot:delivered', 'slot:delivered']);
  expect(passed.at(-1)).toBe('job:finished after 2 published');
});

it('with a publish gap, the first notification goes out at once and those that come within the gap go out together after it', async () => {
  const scheduler = new VirtualTimeScheduler();
  const published: string[] = [];
  const publish = async (payload: string) => void published.push(String((JSON.parse(payload) as { slot: number }).slot));
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const jobId = 'j-gap';
  const source = new Subject<PipelineEvent>();
  const done = lastValueFrom(source.pipe(progressWriter({} as Database, { publish, writeProgress: async () => {}, intervalMs: 0, publishGapMs: 40, scheduler }), toArray()));
  source.next(delivered(jobId, 0, 0, 'a0', 1, 4));
  source.next(delivered(jobId, 0, 1, 'a1', 2, 4));
  await settle();
  source.next(delivered(jobId, 0, 2, 'a2', 3, 4));
  await settle();
  // The first is out; the next two wait for the gap (without one they would be out by now).
  expect(published).toEqual(['0']);
  scheduler.flush();
  await settle();
  expect(published).toEqual(['0', '1', '2']);
  // After a quiet gap, the next one goes out at once again.
  scheduler.flush();
  await settle();
  source.next(delivered(jobId, 0, 3, 'a3', 4, 4));
  await settle();
  expect(published).toEqual(['0', '1', '2', '3']);
  source.complete();
  scheduler.flush();
  await settle();
  scheduler.flush();
  expect((await done).map((e) => e.type)).toEqual(Array(4).fill('slot:delivered'));
});

it("a job's end does not wait for the publish gap: its last notifications go out and job:finished passes with no time passing", async () => {
  const scheduler = new VirtualTimeScheduler();
  const published: string[] = [];
  const publish = async (payload: string) => void published.push(String((JSON.parse(payload) as { slot: number }).slot));
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const jobId = 'j-gap-end';
  const source = new Subject<PipelineEvent>();
  const passed: string[] = [];
  const done = lastValueFrom(
    source.pipe(
      progressWriter({} as Database, { publish, writeProgress: async () => {}, intervalMs: 0, publishGapMs: 60_000, scheduler }),
      tap((event) => passed.push(event.type)),
      toArray(),
    ),
  );
  source.next(delivered(jobId, 0, 0, 'a0', 1, 2));
  await settle();
  source.next(delivered(jobId, 0, 1, 'a1', 2, 2));
  await settle();
  expect(published).toEqual(['0']);
  source.next({
    type: 'job:finished', jobId, at: 0, status: 'completed', attachIds: ['a0', 'a1'],
    result: { jobId, status: 'completed', totalImages: 2, deliveredImages: 2, attachIds: ['a0', 'a1'], stages: [] },
  });
  source.complete();
  // The scheduler's clock has not moved: without the cut, the 60 s gap would hold the second
  // notification, and job:finished behind it.
  await until(() => passed.length === 3);
  expect(published).toEqual(['0', '1']);
  expect(passed).toEqual(['slot:delivered', 'slot:delivered', 'job:finished']);
  // The stream itself completes once the progress row's (virtual) throttle has run.
  scheduler.flush();
  expect(await done).toHaveLength(3);
});

it('without a publish gap, notifications that come during a publish go out right after it', async () => {
  const published: string[] = [];
  const publish = async (payload: string) => void published.push(String((JSON.parse(payload) as { slot: number }).slot));
  const settle = () => new Promise((resolve) => setImmediate(resolve));
  const source = new Subject<PipelineEvent>();
  const done = lastValueFrom(source.pipe(progressWriter({} as Database, { publish, writeProgress: async () => {}, intervalMs: 0 }), toArray()));
  source.next(delivered('j-nogap', 0, 0, 'a0', 1, 3));
  source.next(delivered('j-nogap', 0, 1, 'a1', 2, 3));
  source.next(delivered('j-nogap', 0, 2, 'a2', 3, 3));
  await settle();
  expect(published).toEqual(['0', '1', '2']);
  source.complete();
  await done;
});
