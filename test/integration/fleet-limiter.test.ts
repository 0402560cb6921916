/**
 * `FleetLimiter`, one worker's share of the fleet's provider limit, on PGlite and PostgreSQL:
 * a 429 reaches the shared limit and the other workers at once (not at the next timer tick),
 * even when it comes while a rebalance is already running.
 *
 * The timer is set to ten minutes, so nothing here happens because of it: every move comes
 * from a 429, a starved worker or a NOTIFY.
 */
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { Subject, firstValueFrom, type Subscription } from 'rxjs';
import { afterEach, expect, it } from 'vitest';
import { openDatabase, type Database } from '../../src/db/index.js';
import type { Permit } from '../../src/engine/concurrency-limiter.js';
import { FleetLimiter } from '../../src/streams/fleet-limiter.js';
import { forEachDatabase } from '../support/databases.js';

const NO_TICK_MS = 600_000;

/** Polls `check` every 20 ms, at most `tries` times; returns its last answer. */
async function eventually(check: () => Promise<boolean> | boolean, tries = 250): Promise<boolean> {
  for (let i = 0; i < tries; i++) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return check();
}

forEachDatabase('FleetLimiter: cuts reach the fleet at once', (ctx) => {
  const started: FleetLimiter[] = [];
  const held: Subscription[] = [];
  const release = new Subject<void>();

  afterEach(async () => {
    release.next();
    for (const s of held.splice(0)) s.unsubscribe();
    for (const limiter of started.splice(0)) await limiter.stop();
  });

  async function worker(key: string, name: string): Promise<FleetLimiter> {
    const limiter = new FleetLimiter({
      database: ctx.database,
      workerId: `${name}:${process.pid}:${randomUUID()}`,
      name,
      providerKey: key,
      concurrency: 2,
      providerMaxInFlight: 4,
      ttlMs: 60_000,
      rebalanceMs: NO_TICK_MS,
    });
    await limiter.start();
    started.push(limiter);
    return limiter;
  }

  /** Starts a call under `limiter` that holds its permit until the test ends; resolves with the permit. */
  function hold(limiter: FleetLimiter): Promise<Permit> {
    const permit = new Subject<Permit>();
    const got = firstValueFrom(permit);
    held.push(
      limiter
        .run((p) => {
          permit.next(p);
          return release;
        })
        .subscribe(),
    );
    return got;
  }

  const sharedLimit = async (key: string) =>
    (await ctx.database.db.selectFrom('provider_limits').select(['current_limit', 'epoch']).where('key', '=', key).executeTakeFirstOrThrow());

  it('a 429 at one worker cuts the shared limit and the other worker\'s share without waiting for a tick', async () => {
    const key = `key-${randomUUID()}`;
    const a = await worker(key, 'a');
    const b = await worker(key, 'b');
    // Starved workers ask at once: each gets its demand of 2 out of the ceiling of 4.
    // The second call of a started under the latest share: its permit is current.
    const [, permit] = await Promise.all([hold(a), hold(a), hold(b), hold(b)]);
    expect([a.limit, b.limit, a.active, b.active]).toEqual([2, 2, 2, 2]);
    const before = await sharedLimit(key);
    expect(before.current_limit).toBe(4);

    a.onRateLimited(permit!);
    // The refusing worker cuts its own share in the same tick.
    expect(a.limit).toBe(1);
    // The key's first 429 steps back by one; the other worker hears of it by NOTIFY and gives
    // back what the fleet no longer has: 3 = a's 2 still in flight + b's 1.
    expect(await eventually(async () => (await sharedLimit(key)).current_limit === 3)).toBe(true);
    expect(await eventually(() => b.limit === 1)).toBe(true);
    expect((await sharedLimit(key)).epoch).toBe(before.epoch + 1);
  });

  // PostgreSQL only: it needs a second session to hold the key's row while a rebalance waits
  // for it. PGlite runs one statement at a time in one session: a rebalance never waits there.
  if (ctx.kind === 'postgres') {
    it('a 429 that comes while a rebalance is running is reported right after it, not dropped until the next tick', async () => {
      const key = `key-${randomUUID()}`;
      const a = await worker(key, 'a');
      const permit = await hold(a);
      const { epoch } = await sharedLimit(key);

      const blocker: Database = await openDatabase(ctx.config);
      try {
        await blocker.db.transaction().execute(async (trx) => {
          await trx.selectFrom('provider_limits').select('key').where('key', '=', key).forUpdate().execute();
          // A second call finds no free permit: the starved worker starts a rebalance, which
          // now waits for the row.
          void hold(a);
          const waiting = async () =>
            Number(
              (
                await sql<{ n: string }>`select count(*) as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`.execute(
                  blocker.db,
                )
              ).rows[0]?.n ?? 0,
            ) === 1;
          expect(await eventually(waiting)).toBe(true);
          // The 429 comes while that rebalance runs, well after the starved worker's asks (their
          // throttle window has closed), and the row stays held a while after it: only a 429
          // that is remembered gets reported. These pauses widen the window of the race; the
          // verdict does not depend on them.
          await new Promise((r) => setTimeout(r, 300));
          a.onRateLimited(permit);
          await new Promise((r) => setTimeout(r, 300));
        });
      } finally {
        await blocker.close();
      }
      expect(await eventually(async () => (await sharedLimit(key)).epoch === epoch + 1)).toBe(true);
    });
  }
});
