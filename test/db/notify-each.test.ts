/**
 * The hot path's NOTIFYs in fewer round trips: `notifyEach` publishes several payloads in
 * one statement, in order; a delivery announces its event with the exact bytes
 * `encodeJobEventsAppended` gives (built in SQL from `jobEventsAppendedPrefix`).
 */
import { expect, it } from 'vitest';
import { deliverSlot, JOB_EVENTS_CHANNEL, notifyEach } from '../../src/db/index.js';
import { encodeJobEventsAppended, jobEventsAppendedPrefix } from '../../src/db/notifications.js';
import { forEachDatabase, withSecondConnection } from '../support/databases.js';
import { deliveryOf, seedJob, until } from './fixtures.js';

it('the prefix of a job events payload is the encoded payload up to its number', () => {
  for (const jobId of ['j-1', 'job "quoted" \\ é 漢', '']) {
    for (const seq of [0, 7, 123456]) expect(`${jobEventsAppendedPrefix(jobId)}${seq}}`).toBe(encodeJobEventsAppended({ jobId, seq }));
  }
});

forEachDatabase('notifyEach and the delivery NOTIFY', (ctx) => {
  it('publishes every payload once, in the order given, in one statement', async () => {
    const channel = 'imagegen_test_notify_each';
    const payloads = ['first', '{"json":"with \\"quotes\\""}', 'third é 漢', 'fourth', 'fifth'];
    await withSecondConnection(ctx, async (reader) => {
      const received: string[] = [];
      const stop = await reader.listen(channel, (payload) => received.push(payload));
      try {
        await notifyEach(ctx.database, channel, payloads);
        await notifyEach(ctx.database, channel, ['sixth']);
        await notifyEach(ctx.database, channel, []);
        await until(() => received.length >= 6);
        // A query after the last notify: anything it sent has been handed over by now.
        await ctx.database.db.selectNoFrom((eb) => eb.val(1).as('one')).execute();
        expect(received).toEqual([...payloads, 'sixth']);
      } finally {
        await stop();
      }
    });
  });

  it('a delivery announces its event number with the bytes encodeJobEventsAppended gives', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await withSecondConnection(ctx, async (reader) => {
      const received: string[] = [];
      const stop = await reader.listen(JOB_EVENTS_CHANNEL, (payload) => {
        if (payload.includes(jobId)) received.push(payload);
      });
      try {
        await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
        await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
        await until(() => received.length >= 2);
        expect(received).toEqual([encodeJobEventsAppended({ jobId, seq: 1 }), encodeJobEventsAppended({ jobId, seq: 2 })]);
      } finally {
        await stop();
      }
    });
  });
});
