/**
 * The fleet's database operations, on PGlite and PostgreSQL: taking over jobs nobody runs
 * (`claimUnattendedJob`), refusing a delivery after a lost lease (`deliverSlot`), the
 * workers' rows, and one provider limit shared by the workers (`rebalanceProviderShare`).
 */
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { expect, it } from 'vitest';
import {
  claimJobLease,
  claimUnattendedJob,
  deliverSlot,
  findJobRunner,
  getBalance,
  LeaseLostError,
  listWorkers,
  rebalanceProviderShare,
  registerWorker,
  releaseJobLease,
  removeWorker,
  type Database,
} from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, seedJob, uid } from './fixtures.js';

/** Long enough that jobs other tests left unheld never count as unattended here. */
const HOUR = 3_600_000;

async function age(database: Database, jobId: string, set: 'lease_until' | 'updated_at', secondsAgo: number): Promise<void> {
  await sql`update jobs set ${sql.ref(set)} = now() - ${`${secondsAgo} seconds`}::interval where id = ${jobId}`.execute(database.db);
}

async function newWorker(database: Database, options: { key: string; concurrency: number; ceiling?: number }): Promise<string> {
  const id = `host-${uid('w')}:${1000 + Math.floor(Math.random() * 1000)}:${randomUUID()}`;
  await registerWorker(database, { id, name: 'test-host', pid: 1234, providerKey: options.key, concurrency: options.concurrency, providerCeiling: options.ceiling ?? null, ttlMs: 15_000 });
  return id;
}

forEachDatabase('the fleet', (ctx) => {
  it('a job whose lease lapsed is taken over with its previous owner named; a live lease is never taken', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await claimJobLease(ctx.database, jobId, 'dead-host:1:a', 15_000);
    expect(await claimUnattendedJob(ctx.database, 'live-host:2:b', 15_000, HOUR)).toBeNull();
    await age(ctx.database, jobId, 'lease_until', 1);
    expect(await claimUnattendedJob(ctx.database, 'live-host:2:b', 15_000, HOUR)).toEqual({ jobId, previousOwner: 'dead-host:1:a' });
    const runner = await findJobRunner(ctx.database, jobId);
    expect(runner).toMatchObject({ id: 'live-host:2:b', name: 'live-host', pid: 2, worker: false });
    // Now held (and renewed) by the new owner: nobody takes it again.
    expect(await claimUnattendedJob(ctx.database, 'third-host:3:c', 15_000, HOUR)).toBeNull();
  });

  it('a job nobody has held for the grace period is taken (a lost queue message, a hand-back); a fresh one and a finished one are not', async () => {
    const fresh = await seedJob(ctx.database, { quantities: [1] });
    const stale = await seedJob(ctx.database, { quantities: [1] });
    const released = await seedJob(ctx.database, { quantities: [1] });
    await age(ctx.database, stale.jobId, 'updated_at', 120);
    // Handed back two minutes ago: the release keeps the time in lease_until.
    await claimJobLease(ctx.database, released.jobId, 'old:1:x', 15_000);
    await releaseJobLease(ctx.database, released.jobId, 'old:1:x');
    await age(ctx.database, released.jobId, 'lease_until', 120);
    await age(ctx.database, released.jobId, 'updated_at', 120);
    await sql`update jobs set status = 'completed' where id = ${fresh.jobId}`.execute(ctx.database.db);
    const taken = [await claimUnattendedJob(ctx.database, 'w:9:z', 15_000, 60_000), await claimUnattendedJob(ctx.database, 'w:9:z', 15_000, 60_000)];
    expect(taken.map((t) => t?.jobId).sort()).toEqual([stale.jobId, released.jobId].sort());
    expect(taken.every((t) => t?.previousOwner === null)).toBe(true);
  });

  it('the highest priority goes first, then the oldest', async () => {
    const low = await seedJob(ctx.database, { quantities: [1] });
    const high = await seedJob(ctx.database, { quantities: [1] });
    await sql`update jobs set priority = 7 where id = ${high.jobId}`.execute(ctx.database.db);
    for (const { jobId } of [low, high]) {
      await claimJobLease(ctx.database, jobId, 'gone:1:q', 15_000);
      await age(ctx.database, jobId, 'lease_until', 1);
    }
    expect((await claimUnattendedJob(ctx.database, 'w:1:p', 15_000, HOUR))?.jobId).toBe(high.jobId);
    expect((await claimUnattendedJob(ctx.database, 'w:1:p', 15_000, HOUR))?.jobId).toBe(low.jobId);
  });

  it('racing sweeps take each unattended job exactly once', async () => {
    const jobs = await Promise.all([1, 2, 3, 4].map(() => seedJob(ctx.database, { quantities: [1] })));
    for (const { jobId } of jobs) {
      await claimJobLease(ctx.database, jobId, 'gone:1:r', 15_000);
      await age(ctx.database, jobId, 'lease_until', 1);
    }
    const claims = await Promise.all(Array.from({ length: 8 }, (_, i) => claimUnattendedJob(ctx.database, `w:${i}:s`, 15_000, HOUR)));
    const taken = claims.flatMap((c) => (c ? [c.jobId] : []));
    expect(taken.sort()).toEqual(jobs.map((j) => j.jobId).sort());
  });

  it('a delivery by a runner that lost the lease is refused and writes nothing', async () => {
    const { jobId, userId } = await seedJob(ctx.database, { quantities: [2], pricePerImage: 10, credits: 100 });
    await claimJobLease(ctx.database, jobId, 'first:1:a', 15_000);
    await deliverSlot(ctx.database, { ...deliveryOf(jobId, 0, 0), leaseOwner: 'first:1:a' });
    await age(ctx.database, jobId, 'lease_until', 1);
    await claimJobLease(ctx.database, jobId, 'second:2:b', 15_000);
    const before = await getBalance(ctx.database, userId);
    await expect(deliverSlot(ctx.database, { ...deliveryOf(jobId, 0, 1), leaseOwner: 'first:1:a' })).rejects.toBeInstanceOf(LeaseLostError);
    expect(await getBalance(ctx.database, userId)).toEqual(before);
    const rows = await ctx.database.db.selectFrom('attachments').select('slot_index').where('job_id', '=', jobId).execute();
    expect(rows.map((r) => r.slot_index)).toEqual([0]);
    // The holder delivers.
    expect((await deliverSlot(ctx.database, { ...deliveryOf(jobId, 0, 1), leaseOwner: 'second:2:b' })).duplicate).toBe(false);
  });

  it('workers share one provider limit: a fair split of the ceiling, never more held than the limit, a dead worker holds nothing', async () => {
    const key = uid('key');
    const a = await newWorker(ctx.database, { key, concurrency: 8, ceiling: 6 });
    const b = await newWorker(ctx.database, { key, concurrency: 8, ceiling: 6 });
    const report = (workerId: string, demand: number, inFlight = 0) => rebalanceProviderShare(ctx.database, { workerId, providerKey: key, demand, inFlight, ttlMs: 15_000, rateLimitedAt: null, successes: 0 });
    // A alone asks for 8: it gets the whole ceiling, 6.
    expect(await report(a, 8)).toMatchObject({ limit: 6, held: 6, sharedLimit: 6, workers: 2 });
    // B asks for 8 while A holds 6: B gets nothing yet (the limit is held), A gives back to its target of 3 next time.
    expect(await report(b, 8)).toMatchObject({ limit: 0, held: 0 });
    expect(await report(a, 8, 5)).toMatchObject({ limit: 3, held: 5 });
    expect(await report(b, 8)).toMatchObject({ limit: 1, held: 1 });
    expect(await report(a, 8, 3)).toMatchObject({ limit: 3, held: 3 });
    expect(await report(b, 8)).toMatchObject({ limit: 3, held: 3 });
    const held = await ctx.database.db.selectFrom('workers').select((eb) => eb.fn.sum<number>('held').as('n')).where('provider_key', '=', key).executeTakeFirstOrThrow();
    expect(Number(held.n)).toBeLessThanOrEqual(6);
    // A dies (its heartbeat lapses): B may take the whole limit.
    await sql`update workers set alive_until = now() - interval '1 second' where id = ${a}`.execute(ctx.database.db);
    expect(await report(b, 8)).toMatchObject({ limit: 6, held: 6, workers: 1 });
    expect((await listWorkers(ctx.database)).map((w) => w.id)).toContain(b);
    expect((await listWorkers(ctx.database)).map((w) => w.id)).not.toContain(a);
    await removeWorker(ctx.database, b);
    expect((await listWorkers(ctx.database)).map((w) => w.id)).not.toContain(b);
  });

  it('the fleet starts at half a worker\'s concurrency and grows; a 429 burst seen by two workers cuts once; successes grow it back', async () => {
    const key = uid('key');
    const a = await newWorker(ctx.database, { key, concurrency: 8 });
    const b = await newWorker(ctx.database, { key, concurrency: 8 });
    const report = (workerId: string, rateLimitedAt: number | null, successes = 0) => rebalanceProviderShare(ctx.database, { workerId, providerKey: key, demand: 8, inFlight: 0, ttlMs: 15_000, rateLimitedAt, successes });
    const first = await report(a, null);
    expect(first.sharedLimit).toBe(4); // slow start: half the first worker's concurrency (no ceiling set)
    // 4 successes grow it to 5, 5 more to 6 (one step per `limit` successes).
    expect((await report(b, null, 4)).sharedLimit).toBe(5);
    expect((await report(a, null, 5)).sharedLimit).toBe(6);
    // The first 429 at 6: the wall is right there, one step back.
    const firstCut = await report(a, first.epoch);
    expect(firstCut.sharedLimit).toBe(5);
    // B saw the same burst under the old epoch: no second cut.
    expect((await report(b, first.epoch)).sharedLimit).toBe(5);
    // A 429 below the last cut (6): the wall moved down, x0.7.
    expect((await report(b, firstCut.epoch)).sharedLimit).toBe(3);
    // 3 successes grow it to 4 (below the last cut, 5, growth is one step per `limit` successes).
    expect((await report(a, null, 3)).sharedLimit).toBe(4);
    const row = await ctx.database.db.selectFrom('provider_limits').select(['cuts', 'last_cut_at']).where('key', '=', key).executeTakeFirstOrThrow();
    expect(row).toEqual({ cuts: 2, last_cut_at: 5 });
  });
});
