/**
 * A run's control signals against a real database: every stage of a job subscribes to the
 * run's `cancel$`, and one poll of the job row per tick serves them all (each subscriber used
 * to start a poller of its own: a 3-stage job asked the row three times per tick); a stage that
 * subscribes after the cancel came gets it at once.
 */
import type { KyselyPlugin, SelectQueryNode } from 'kysely';
import { Subject, firstValueFrom, type Subscription } from 'rxjs';
import { afterEach, expect, it } from 'vitest';
import { grantCredits, submitJob, type Database } from '../../src/db/index.js';
import { controlSignals } from '../../src/sources/control-signals.js';
import { inputAttachment, makeSpec, uid, until } from '../db/fixtures.js';
import { forEachDatabase } from '../support/databases.js';

/** Holds every answer to the cancel poll (`select cancel_requested from jobs`): `inFlight` counts the polls that ran and wait. */
function holdCancelPolls(): { plugin: KyselyPlugin; inFlight: () => number; release: () => void } {
  const polls = new WeakSet<object>();
  let waiting = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const plugin: KyselyPlugin = {
    transformQuery(args) {
      const node = args.node as SelectQueryNode;
      if (node.kind === 'SelectQueryNode' && JSON.stringify(node.selections ?? []).includes('cancel_requested')) polls.add(args.queryId);
      return args.node;
    },
    async transformResult(args) {
      if (polls.has(args.queryId)) {
        waiting++;
        await released;
      }
      return args.result;
    },
  };
  return { plugin, inFlight: () => waiting, release };
}

async function seedJob(database: Database): Promise<string> {
  const userId = uid('user');
  await grantCredits(database, userId, 100);
  const { jobId } = await submitJob(database, { spec: makeSpec(userId, [1, 1, 1], await inputAttachment(database, userId)), pricePerImage: 1 });
  return jobId;
}

forEachDatabase('control signals', (ctx) => {
  const subscriptions: Subscription[] = [];
  afterEach(() => {
    for (const subscription of subscriptions.splice(0)) subscription.unsubscribe();
  });

  it('three stages listening to cancel$ make one poll per tick, not three', async () => {
    const jobId = await seedJob(ctx.database);
    const held = holdCancelPolls();
    const database: Database = { ...ctx.database, db: ctx.database.db.withPlugin(held.plugin) };
    const signals = controlSignals({ database, jobId, cancelRequested: false, leaseLost$: new Subject<void>(), cancelPollMs: 10, graceMs: 1000 });
    for (let stage = 0; stage < 3; stage++) subscriptions.push(signals.cancel$.subscribe());
    await until(() => held.inFlight() >= 1);
    // Thirty ticks more: a poller of each subscriber would have sent its poll by now.
    await new Promise((resolve) => setTimeout(resolve, 300));
    // A poll still running is not doubled (exhaustMap), so one poller has exactly one in flight.
    expect(held.inFlight()).toBe(1);
    held.release();
  });

  it('a stage that subscribes after the cancel came gets it at once', async () => {
    const jobId = await seedJob(ctx.database);
    const cancel = new Subject<void>();
    const signals = controlSignals({ database: ctx.database, jobId, cancelRequested: false, cancel$: cancel, leaseLost$: new Subject<void>(), cancelPollMs: 60_000, graceMs: 1000 });
    const first = firstValueFrom(signals.cancel$);
    cancel.next();
    await first;
    let late = false;
    subscriptions.push(signals.cancel$.subscribe(() => (late = true)));
    expect(late, 'replayed synchronously to the late subscriber').toBe(true);
  });
});
