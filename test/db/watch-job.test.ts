import { sql } from 'kysely';
import { lastValueFrom, Subject, toArray, type Subscription } from 'rxjs';
import { expect, it } from 'vitest';
import type { PipelineEvent } from '../../src/domain/events.js';
import { deliverSlot, encodeNotification, finishJob, JobNotFoundError, openDatabase, PROGRESS_CHANNEL, requestCancel } from '../../src/db/index.js';
import type { NotifiedEvent } from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { progressWriter } from '../../src/sinks/progress-writer.js';
import { watchJob, type WatchedEvent } from '../../src/sources/watch-job.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, resultFromDatabase, seedJob, until } from './fixtures.js';

/** Subscribes and records; `done` settles when the watch completes or errors. */
function record(database: Database, jobId: string) {
  const events: WatchedEvent[] = [];
  let subscription: Subscription | undefined;
  const done = new Promise<void>((resolve, reject) => {
    subscription = watchJob(database, jobId).subscribe({ next: (e) => events.push(e), complete: resolve, error: reject });
  });
  return { events, done, unsubscribe: () => subscription?.unsubscribe() };
}

forEachDatabase('watchJob', (ctx) => {
  /** PostgreSQL: a second Database (its own pool and LISTEN connection). PGlite: the same in-process instance. */
  async function withWatcher<T>(fn: (watcher: Database) => Promise<T>): Promise<T> {
    if (ctx.kind === 'pglite') return fn(ctx.database);
    const watcher = await openDatabase(ctx.config);
    try {
      return await fn(watcher);
    } finally {
      await watcher.close();
    }
  }

  it('emits a snapshot, then live events from another connection, and completes on job:finished', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    const early = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));

    await withWatcher(async (watcher) => {
      const watch = record(watcher, jobId);
      await until(() => watch.events.length > 0);
      expect(watch.events[0]).toEqual({
        type: 'snapshot', jobId, status: 'queued', total: 3, delivered: 1, attachIds: [early.attachId], cancelRequested: false,
        stages: [{ index: 0, quantity: 3, delivered: 1, status: 'pending' }],
      });

      // The worker side: deliveries, their events through the progress writer, then finishJob.
      const source = new Subject<PipelineEvent>();
      const written = lastValueFrom(source.pipe(progressWriter(ctx.database, { intervalMs: 10 }), toArray()));
      const ids: string[] = [];
      for (const [n, slot] of [0, 2].entries()) {
        const { attachId } = await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot));
        ids.push(attachId);
        source.next({
          type: 'slot:delivered', jobId, at: n, stage: 0, slot, attempt: 1, attachId, latencyMs: 5, providerLatencyMs: 3, usage: null,
          stageProgress: { delivered: n + 2, total: 3 }, progress: { delivered: n + 2, total: 3 },
        });
      }
      source.next({ type: 'stage:completed', jobId, at: 3, stage: 0, quantity: 3, delivered: 3 });
      source.complete();
      await written;
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
      await watch.done;

      expect(watch.events.slice(1)).toEqual([
        { type: 'slot:delivered', jobId, stage: 0, slot: 0, attempt: 1, attachId: ids[0], stageProgress: { delivered: 2, total: 3 }, progress: { delivered: 2, total: 3 } },
        { type: 'slot:delivered', jobId, stage: 0, slot: 2, attempt: 1, attachId: ids[1], stageProgress: { delivered: 3, total: 3 }, progress: { delivered: 3, total: 3 } },
        { type: 'stage:completed', jobId, stage: 0, quantity: 3, delivered: 3 },
        { type: 'job:finished', jobId, status: 'completed', result: { totalImages: 3, deliveredImages: 3 } },
      ]);
    });
  });

  it('holds back events that arrive before the snapshot and drops deliveries the snapshot already has', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const known = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    const notified = (attachId: string, slot: number): NotifiedEvent => ({
      type: 'slot:delivered', jobId, stage: 0, slot, attempt: 1, attachId, stageProgress: { delivered: slot + 1, total: 2 }, progress: { delivered: slot + 1, total: 2 },
    });
    await withWatcher(async (watcher) => {
      // Publish two notifications after LISTEN is active but before the snapshot is read.
      let heard = 0;
      const racing: Database = {
        ...watcher,
        async listen(channel, onPayload) {
          const stop = await watcher.listen(channel, (payload) => {
            heard += 1;
            onPayload(payload);
          });
          await ctx.database.notify(PROGRESS_CHANNEL, encodeNotification(notified(known.attachId, 0)));
          await ctx.database.notify(PROGRESS_CHANNEL, encodeNotification(notified('later-id', 1)));
          await until(() => heard === 2);
          return stop;
        },
      };
      const watch = record(racing, jobId);
      await until(() => watch.events.length === 2);
      expect(watch.events[0]).toMatchObject({ type: 'snapshot', attachIds: [known.attachId] });
      expect(watch.events[1]).toEqual(notified('later-id', 1));
      watch.unsubscribe();
    });
  });

  it('ignores other jobs and passes cancel requests on', async () => {
    const mine = await seedJob(ctx.database, { quantities: [1] });
    const other = await seedJob(ctx.database, { quantities: [1] });
    await withWatcher(async (watcher) => {
      const watch = record(watcher, mine.jobId);
      await until(() => watch.events.length > 0);
      await requestCancel(ctx.database, other.jobId);
      await requestCancel(ctx.database, mine.jobId);
      await finishJob(ctx.database, other.jobId, await resultFromDatabase(ctx.database, other.jobId, true));
      await finishJob(ctx.database, mine.jobId, await resultFromDatabase(ctx.database, mine.jobId, true));
      await watch.done;
      expect(watch.events.map((e) => e.type)).toEqual(['snapshot', 'job:cancel-requested', 'job:finished']);
      expect(watch.events.every((e) => e.jobId === mine.jobId)).toBe(true);
      expect(watch.events[2]).toMatchObject({ status: 'cancelled', result: { deliveredImages: 0 } });
    });
  });

  it('skips a payload that is not a valid notification and tells the logger, then goes on', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await withWatcher(async (watcher) => {
      const warned: unknown[][] = [];
      const events: WatchedEvent[] = [];
      const done = new Promise<void>((resolve, reject) => {
        watchJob(watcher, jobId, { logger: { warn: (...args: unknown[]) => void warned.push(args) } }).subscribe({ next: (e) => events.push(e), complete: resolve, error: reject });
      });
      await until(() => events.length > 0);
      await ctx.database.notify(PROGRESS_CHANNEL, JSON.stringify({ type: 'slot:delivered', jobId, attachId: 'no-counts' }));
      await ctx.database.notify(PROGRESS_CHANNEL, 'not json');
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId, true));
      await done;
      expect(events.map((e) => e.type)).toEqual(['snapshot', 'job:finished']);
      expect(warned).toHaveLength(2);
      expect(warned[0]).toEqual([expect.objectContaining({ channel: PROGRESS_CHANNEL, watchedJobId: jobId }), 'skipped a progress notification that is not valid']);
    });
  });

  it('completes right after the snapshot when the job has already ended', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const a = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    await withWatcher(async (watcher) => {
      const events = await lastValueFrom(watchJob(watcher, jobId).pipe(toArray()));
      expect(events).toEqual([
        {
          type: 'snapshot', jobId, status: 'partial', total: 2, delivered: 1, attachIds: [a.attachId], cancelRequested: false,
          stages: [{ index: 0, quantity: 2, delivered: 1, status: 'short' }],
        },
      ]);
    });
  });

  it('errors with JobNotFoundError for an unknown job', async () => {
    await withWatcher(async (watcher) => {
      await expect(lastValueFrom(watchJob(watcher, 'no-such-job'))).rejects.toBeInstanceOf(JobNotFoundError);
    });
  });

  it('stops listening on unsubscribe', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    await withWatcher(async (watcher) => {
      // Count the watch's listeners through the Database port (both kinds: on PGlite this is the
      // instance's listen/unlisten callback) and learn when its unlisten has finished.
      let active = 0;
      let unlistened!: () => void;
      const unlistenDone = new Promise<void>((resolve) => (unlistened = resolve));
      const counted: Database = {
        ...watcher,
        async listen(channel, onPayload) {
          const stop = await watcher.listen(channel, onPayload);
          active += 1;
          return async () => {
            await stop();
            active -= 1;
            unlistened();
          };
        },
      };
      const pgListeners = async () => {
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from pg_stat_activity
          where datname = current_database() and query ilike 'listen %'`.execute(ctx.database.db);
        return rows[0]?.n ?? 0;
      };
      const watch = record(counted, jobId);
      await until(() => watch.events.length > 0);
      expect(active).toBe(1);
      if (ctx.kind === 'postgres') {
        // Exactly the watch's own listener, once a listener an earlier test closed has left
        // pg_stat_activity (its backend exits a moment after the client ends, later under load).
        const deadline = Date.now() + 10_000;
        while ((await pgListeners()) !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(await pgListeners()).toBe(1);
      }
      watch.unsubscribe();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        unlistenDone,
        new Promise((_, reject) => (timer = setTimeout(() => reject(new Error('the watch did not unlisten within 5 s of the unsubscribe')), 5000))),
      ]).finally(() => clearTimeout(timer));
      expect(active).toBe(0);

      // A listener of the test's own, on the same database the watch listened on.
      const heard: string[] = [];
      const stopOwn = await watcher.listen(PROGRESS_CHANNEL, (payload) => heard.push(payload));
      try {
        // The job finishes (its job:finished is published), then a marker the test waits for: once the
        // marker is heard, the job:finished before it was delivered to every listener there was.
        await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
        const marker = `marker-after-unsubscribe-${jobId}`;
        await ctx.database.notify(PROGRESS_CHANNEL, marker);
        await until(() => heard.includes(marker));
        const finishedForThisJob = heard.filter((p) => p !== marker).map((p) => JSON.parse(p) as { type: string; jobId: string });
        expect(finishedForThisJob.filter((e) => e.jobId === jobId).map((e) => e.type)).toEqual(['job:finished']);
      } finally {
        await stopOwn();
      }
      expect(watch.events.map((e) => e.type)).toEqual(['snapshot']);
      if (ctx.kind === 'postgres') {
        const deadline = Date.now() + 5000;
        while ((await pgListeners()) !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        expect(await pgListeners()).toBe(0);
      }
    });
  });
});
