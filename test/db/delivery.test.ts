import { sql, type KyselyPlugin, type PluginTransformQueryArgs, type PluginTransformResultArgs, type QueryResult, type RootOperationNode, type UnknownRow } from 'kysely';
import { expect, it } from 'vitest';
import {
  deliverSlot,
  grantCredits,
  JobNotFoundError,
  submitJob,
  finishJob,
  getAttachment,
  getBalance,
  JobStateError,
  listDeliveredStorageKeys,
  loadJob,
  replayLedger,
} from '../../src/db/index.js';
import type { Database } from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
import { raceCalls, raceTitle } from '../support/pg-race.js';
import { deliveryOf, inputAttachment, makeSpec, resultFromDatabase, seedJob, uid } from './fixtures.js';

/** The statements run through a Kysely instance, by kind (a raw one by its text up to its first parenthesis). `begin`/`commit` are the driver's: a transaction shows as `transaction`. */
class Statements implements KyselyPlugin {
  readonly seen: string[] = [];
  transformQuery({ node }: PluginTransformQueryArgs): RootOperationNode {
    this.seen.push(node.kind === 'RawNode' ? node.sqlFragments.join('$').trim().split('(')[0]! : node.kind);
    return node;
  }
  transformResult({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return Promise.resolve(result);
  }
}

/** `database` whose statements `statements` records, and whose transactions it marks. */
function counted(database: Database, statements: Statements): Database {
  const db = database.db.withPlugin(statements);
  const marked = new Proxy(db, {
    get(target, key) {
      if (key === 'transaction') return () => (statements.seen.push('transaction'), target.transaction());
      const value: unknown = Reflect.get(target, key, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { ...database, db: marked };
}

/** Everything one delivery writes, for one job. */
async function jobFootprint(database: Database, jobId: string) {
  const { db } = database;
  const job = await db.selectFrom('jobs').select(['delivered', 'credits_captured']).where('id', '=', jobId).executeTakeFirstOrThrow();
  const stages = await db.selectFrom('stages').select(['stage_index', 'delivered']).where('job_id', '=', jobId).orderBy('stage_index').execute();
  const slots = await db
    .selectFrom('slots')
    .select(['stage_index', 'slot_index', 'attach_id'])
    .where('job_id', '=', jobId)
    .orderBy('stage_index')
    .orderBy('slot_index')
    .execute();
  const attachments = await db.selectFrom('attachments').select('id').where('job_id', '=', jobId).orderBy('id').execute();
  const captures = await db.selectFrom('credit_ledger').select(['attach_id', 'amount']).where('job_id', '=', jobId).where('kind', '=', 'capture').execute();
  return { job, stages, slots, attachments, captures };
}

forEachDatabase('delivery', (ctx) => {
  it('one delivery writes the attach record, fills the slot, captures one price and bumps both counters', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [2, 2], pricePerImage: 3, credits: 12 });
    const delivery = await deliverSlot(ctx.database, deliveryOf(jobId, 1, 0, 2));
    expect(delivery.duplicate).toBe(false);

    const attachment = await getAttachment(ctx.database, delivery.attachId);
    expect(attachment).toMatchObject({
      userId,
      storageKey: `jobs/${jobId}/1/0/2.webp`,
      contentType: 'image/webp',
      byteSize: 2048,
      width: 1024,
      height: 576,
      slot: { jobId, stageIndex: 1, slotIndex: 0, attempt: 2 },
    });
    const after = await jobFootprint(ctx.database, jobId);
    expect(after.job).toEqual({ delivered: 1, credits_captured: 3 });
    expect(after.stages).toEqual([
      { stage_index: 0, delivered: 0 },
      { stage_index: 1, delivered: 1 },
    ]);
    expect(after.slots).toEqual([{ stage_index: 1, slot_index: 0, attach_id: delivery.attachId }]);
    expect(after.captures).toEqual([{ attach_id: delivery.attachId, amount: 3 }]);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 0, reserved: 9 });
    expect(await listDeliveredStorageKeys(ctx.database, jobId)).toEqual(new Set([`jobs/${jobId}/1/0/2.webp`]));
  });

  it('delivering a filled slot again writes nothing, moves no credit and returns the existing attach id', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [3], pricePerImage: 4 });
    const first = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1, 1));
    const before = await jobFootprint(ctx.database, jobId);
    const balanceBefore = await getBalance(ctx.database, userId);

    const again = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1, 3));
    expect(again).toEqual({ attachId: first.attachId, duplicate: true });
    expect(await jobFootprint(ctx.database, jobId)).toEqual(before);
    expect(await getBalance(ctx.database, userId)).toEqual(balanceBefore);
    expect(await listDeliveredStorageKeys(ctx.database, jobId)).toEqual(new Set([`jobs/${jobId}/0/1/1.webp`]));
  });

  it(raceTitle(ctx.kind, 'racing deliveries of one slot fill it once and capture once'), async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [1], pricePerImage: 6, credits: 6 });
    const deliveries = Array.from({ length: 6 }, (_, i) => () => deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, i + 1)));
    const settled = await raceCalls(ctx, { table: 'jobs', where: { id: jobId } }, [deliveries]);
    const values = settled.map((r) => {
      if (r.status === 'rejected') throw r.reason;
      return r.value;
    });
    const fresh = values.filter((r) => !r.duplicate);
    expect(fresh).toHaveLength(1);
    // The five others took the branch that finds the slot already filled, and answer its attach id.
    expect(values.filter((r) => r.duplicate)).toHaveLength(5);
    expect(new Set(values.map((r) => r.attachId))).toEqual(new Set([fresh[0]?.attachId]));
    const after = await jobFootprint(ctx.database, jobId);
    expect(after.attachments).toHaveLength(1);
    expect(after.captures).toHaveLength(1);
    expect(after.job).toEqual({ delivered: 1, credits_captured: 6 });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 0, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 0, reserved: 0 });
  });

  it(raceTitle(ctx.kind, 'parallel deliveries racing a finish never capture after the release'), async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [7], pricePerImage: 3, credits: 21 });
    const early = await resultFromDatabase(ctx.database, jobId);
    const deliver = (slot: number) => () => deliverSlot(ctx.database, deliveryOf(jobId, 0, slot)).then(() => 'delivered' as const);
    const finish = () => finishJob(ctx.database, jobId, early).then(() => 'finished' as const);
    // PostgreSQL: slot 0 is first in the job row's lock queue, then the finish, then slots 1-6 (which of
    // those get the row before the finish is up to the server).
    const settled = await raceCalls<'delivered' | 'finished'>(ctx, { table: 'jobs', where: { id: jobId } }, [[deliver(0)], [finish], [1, 2, 3, 4, 5, 6].map(deliver)]);
    const outcomes = settled.map((r) => (r.status === 'fulfilled' ? r.value : r.reason));
    expect(outcomes[0]).toBe('delivered');
    expect(outcomes[1]).toBe('finished');
    const deliveries = [outcomes[0], ...outcomes.slice(2)];
    for (const o of deliveries) if (o !== 'delivered') expect(o).toBeInstanceOf(JobStateError);
    const delivered = deliveries.filter((o) => o === 'delivered').length;
    if (ctx.kind === 'pglite') expect(delivered).toBe(1); // one after another: the finish came second
    const job = await loadJob(ctx.database, jobId);
    expect(job?.delivered).toBe(delivered);
    expect(job?.status).toBe('failed'); // what the early result (nothing delivered yet) said
    expect(job?.credits).toEqual({ reserved: 21, captured: 3 * delivered, released: 21 - 3 * delivered });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 21 - 3 * delivered, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 21 - 3 * delivered, reserved: 0 });
  });

  it(raceTitle(ctx.kind, 'deliveries queued behind a finish are refused once they get the job row, and capture nothing'), async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [4], pricePerImage: 5, credits: 20 });
    const early = await resultFromDatabase(ctx.database, jobId);
    const deliver = (slot: number) => () => deliverSlot(ctx.database, deliveryOf(jobId, 0, slot)).then(() => 'delivered' as const);
    const finish = () => finishJob(ctx.database, jobId, early).then(() => 'finished' as const);
    // PostgreSQL: the finish is first in the lock queue; every delivery opened its transaction before the
    // finish committed, waited for it, and then found the job final.
    const settled = await raceCalls<'delivered' | 'finished'>(ctx, { table: 'jobs', where: { id: jobId } }, [[finish], [0, 1, 2, 3].map(deliver)]);
    const outcomes = settled.map((r) => (r.status === 'fulfilled' ? r.value : r.reason));
    expect(outcomes[0]).toBe('finished');
    for (const o of outcomes.slice(1)) {
      expect(o).toBeInstanceOf(JobStateError);
      expect((o as Error).message).toMatch(/is failed; its reservation is released, no more deliveries/);
    }
    const after = await jobFootprint(ctx.database, jobId);
    expect(after.attachments).toEqual([]);
    expect(after.captures).toEqual([]);
    expect(after.slots.filter((s) => s.attach_id !== null)).toEqual([]);
    expect((await loadJob(ctx.database, jobId))?.credits).toEqual({ reserved: 20, captured: 0, released: 20 });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 20, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 20, reserved: 0 });
  });

  it('is all or nothing: a failure in its last step leaves no attach record, slot, capture or count', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [2], pricePerImage: 2 });
    // A trigger that fails the stage counter update (the transaction's last write) for this job only.
    await sql`create or replace function fail_stage_update() returns trigger language plpgsql as $$
      begin
        if new.job_id = ${sql.lit(jobId)} then raise exception 'injected stage failure'; end if;
        return new;
      end $$`.execute(ctx.database.db);
    await sql`create or replace trigger fail_stage_update before update of delivered on stages
      for each row execute function fail_stage_update()`.execute(ctx.database.db);
    const before = await jobFootprint(ctx.database, jobId);
    const balance = await getBalance(ctx.database, userId);
    try {
      await expect(deliverSlot(ctx.database, deliveryOf(jobId, 0, 0))).rejects.toThrow(/injected stage failure/);
    } finally {
      await sql`drop trigger fail_stage_update on stages`.execute(ctx.database.db);
    }
    expect(await jobFootprint(ctx.database, jobId)).toEqual(before);
    expect(await getBalance(ctx.database, userId)).toEqual(balance);
    expect(await listDeliveredStorageKeys(ctx.database, jobId)).toEqual(new Set());
    // And the slot can still be delivered afterwards.
    expect((await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0))).duplicate).toBe(false);
  });

  it('refuses a slot outside the stage and a delivery after the job finished', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await expect(deliverSlot(ctx.database, deliveryOf(jobId, 0, 2))).rejects.toBeInstanceOf(JobStateError);
    await expect(deliverSlot(ctx.database, deliveryOf(jobId, 1, 0))).rejects.toBeInstanceOf(JobStateError);
    const filled = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    await expect(deliverSlot(ctx.database, deliveryOf(jobId, 0, 1))).rejects.toThrow(/no more deliveries/);
    // A duplicate of a slot filled before the end still answers idempotently.
    expect(await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0, 5))).toEqual({ attachId: filled.attachId, duplicate: true });
    expect((await loadJob(ctx.database, jobId))?.delivered).toBe(1);
  });

  it('a delivery is ONE statement, the deliver_slot call (no transaction); a refusal is that one statement and writes nothing', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [2], pricePerImage: 2 });
    const statements = new Statements();
    const database = counted(ctx.database, statements);
    const delivery = await deliverSlot(database, deliveryOf(jobId, 0, 0));
    expect(statements.seen).toEqual(['select * from deliver_slot']);
    expect((await getAttachment(ctx.database, delivery.attachId))?.slot).toEqual({ jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });

    const before = await jobFootprint(ctx.database, jobId);
    const balance = await getBalance(ctx.database, userId);
    statements.seen.length = 0;
    await expect(deliverSlot(database, deliveryOf(uid('nojob'), 0, 0))).rejects.toBeInstanceOf(JobNotFoundError);
    await expect(deliverSlot(database, deliveryOf(jobId, 0, 1.5))).rejects.toThrow(/stage 0 has slots 0\.\.1, not 1\.5/);
    await expect(deliverSlot(database, deliveryOf(jobId, 0, -1))).rejects.toThrow(/stage 0 has slots 0\.\.1, not -1/);
    await expect(deliverSlot(database, deliveryOf(jobId, 0.5, 0))).rejects.toThrow(/has no stage 0\.5/);
    await expect(deliverSlot(database, { ...deliveryOf(jobId, 0, 1), leaseOwner: 'w:1:x' })).rejects.toThrow(/no longer leased to w:1:x \(now nobody\)/);
    expect(await deliverSlot(database, deliveryOf(jobId, 0, 0, 3))).toEqual({ attachId: delivery.attachId, duplicate: true });
    expect(statements.seen).toEqual(Array(6).fill('select * from deliver_slot'));
    expect(await jobFootprint(ctx.database, jobId)).toEqual(before);
    expect(await getBalance(ctx.database, userId)).toEqual(balance);
  });

  it('a job with a webhook: the call writes nothing and says so; the delivery runs again in a transaction with its outbox row', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 10);
    const spec = { ...makeSpec(userId, [2], await inputAttachment(ctx.database, userId)), webhook: { url: 'https://hooks.example.com/x', events: ['image.delivered' as const] } };
    const { jobId } = await submitJob(ctx.database, { spec, pricePerImage: 1 });
    const statements = new Statements();
    const delivery = await deliverSlot(counted(ctx.database, statements), deliveryOf(jobId, 0, 1));
    expect(statements.seen).toEqual(['select * from deliver_slot', 'transaction', 'select * from deliver_slot', 'SelectQueryNode']);
    const outbox = await ctx.database.db.selectFrom('webhook_deliveries').select(['seq', 'event_type', 'payload']).where('job_id', '=', jobId).execute();
    expect(outbox).toEqual([
      { seq: 1, event_type: 'image.delivered', payload: expect.objectContaining({ type: 'slot:delivered', slot: 1, attachId: delivery.attachId, seq: 1, stageProgress: { delivered: 1, total: 2 }, progress: { delivered: 1, total: 2 } }) as unknown },
    ]);
    // A duplicate of it: no second row.
    expect(await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1, 2))).toEqual({ attachId: delivery.attachId, duplicate: true });
    expect(await ctx.database.db.selectFrom('webhook_deliveries').select('seq').where('job_id', '=', jobId).execute()).toHaveLength(1);
  });

  it('finishJob refuses to call a short job completed', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    const honest = await resultFromDatabase(ctx.database, jobId);
    const lie = { ...honest, status: 'completed' as const };
    await expect(finishJob(ctx.database, jobId, lie)).rejects.toThrow(/cannot be completed with 1\/2/);
    expect((await loadJob(ctx.database, jobId))?.status).toBe('queued');
  });
});
