/**
 * The webhook outbox (migration 0007): a delivery row is written in the transaction of the
 * event it reports (and only for subscribed events of a job with a webhook), claimed `for
 * update skip locked` under a lease, rescheduled by backoff within the retry window, failed
 * after it, redelivered on request; one signing secret per user.
 */
import { sql } from 'kysely';
import pg from 'pg';
import { Webhook } from 'standardwebhooks';
import { expect, it } from 'vitest';
import {
  claimWebhookDeliveries,
  deliverSlot,
  finishJob,
  getWebhookSecret,
  grantCredits,
  listWebhookDeliveries,
  recordWebhookAttempt,
  redeliverWebhooks,
  submitJob,
  type Database,
} from '../../src/db/index.js';
import type { WebhookEventType } from '../../src/domain/webhook.js';
import { forEachDatabase, withSecondConnection } from '../support/databases.js';
import { deliveryOf, inputAttachment, makeSpec, resultFromDatabase, uid } from './fixtures.js';

const URL_ = 'https://hooks.example.com/imagegen';

/** A submitted job of `quantities`, with a webhook subscribed to `events` (none: no webhook). */
async function seedWebhookJob(database: Database, quantities: readonly number[], events: readonly WebhookEventType[] | null) {
  const userId = uid('user');
  await grantCredits(database, userId, 1000);
  const spec = makeSpec(userId, quantities, await inputAttachment(database, userId));
  const withHook = events === null ? spec : { ...spec, webhook: { url: URL_, events } };
  const { jobId } = await submitJob(database, { spec: withHook, pricePerImage: 1 });
  return { userId, jobId };
}

const rowsOf = (database: Database, jobId: string) =>
  database.db.selectFrom('webhook_deliveries').select(['id', 'seq', 'event_type', 'status', 'user_id', 'url', 'payload']).where('job_id', '=', jobId).orderBy('seq').execute();

/** Makes every pending delivery of `jobId` due now (tests that claim jobs of their own only). */
const dueNow = (database: Database, jobId: string) =>
  database.db.updateTable('webhook_deliveries').set({ next_attempt_at: sql`now() - interval '1 second'` }).where('job_id', '=', jobId).where('status', '=', 'pending').execute();

/** Claims until a claim answers nothing; only this test's job's rows count. */
async function claimAll(database: Database, owner: string, jobId: string, leaseMs = 60_000) {
  const claimed = await claimWebhookDeliveries(database, owner, 100, leaseMs);
  return claimed.filter((d) => d.jobId === jobId);
}

const failure = (id: string, owner: string, extra: Partial<Parameters<typeof recordWebhookAttempt>[1]> = {}) =>
  ({ id, owner, at: new Date(), durationMs: 12, statusCode: 500, error: null, delivered: false, retryDelayMs: 60_000, retryWindowMs: 3_600_000, ...extra }) as const;

forEachDatabase('webhook outbox', (ctx) => {
  it('writes one delivery per subscribed event, in the transaction of the event, with the event and its seq', async () => {
    const { jobId, userId } = await seedWebhookJob(ctx.database, [2], ['image.delivered', 'stage.finished', 'job.finished']);
    const first = await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    expect((await rowsOf(ctx.database, jobId)).map((r) => [r.id, r.event_type, r.status])).toEqual([[`msg_${jobId}_1`, 'image.delivered', 'pending']]);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    const rows = await rowsOf(ctx.database, jobId);
    expect(rows.map((r) => [r.seq, r.event_type])).toEqual([
      [1, 'image.delivered'],
      [2, 'image.delivered'],
      [3, 'stage.finished'],
      [4, 'job.finished'],
    ]);
    expect(rows.every((r) => r.user_id === userId && r.url === URL_)).toBe(true);
    expect(rows[0]?.payload).toMatchObject({ type: 'slot:delivered', jobId, stage: 0, slot: 0, attachId: first.attachId, seq: 1 });
    expect(rows[2]?.payload).toEqual({ type: 'stage:completed', jobId, stage: 0, quantity: 2, delivered: 2, seq: 3 });
  });

  it('writes only the subscribed events (default job.finished), and nothing for a job without a webhook', async () => {
    const only = await seedWebhookJob(ctx.database, [1], ['job.finished']);
    const none = await seedWebhookJob(ctx.database, [1], null);
    for (const { jobId } of [only, none]) {
      await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
      await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    }
    expect((await rowsOf(ctx.database, only.jobId)).map((r) => r.event_type)).toEqual(['job.finished']);
    expect(await rowsOf(ctx.database, none.jobId)).toEqual([]);
    // A shortfall is a stage.finished too (stage:short), with its reason.
    const short = await seedWebhookJob(ctx.database, [2], ['stage.finished']);
    await finishJob(ctx.database, short.jobId, await resultFromDatabase(ctx.database, short.jobId));
    expect((await rowsOf(ctx.database, short.jobId)).map((r) => r.payload)).toEqual([
      { type: 'stage:short', jobId: short.jobId, stage: 0, quantity: 2, delivered: 0, reason: 'budget_exhausted', errorClass: 'overloaded', seq: 1 },
    ]);
  });

  it('a delivery whose transaction rolls back writes no webhook row', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [1], ['image.delivered']);
    // Fails the delivery at commit (a deferred constraint trigger on its event row): after the event
    // and its outbox row were written, so the outbox row exists inside the transaction and goes with it.
    await sql`create or replace function fail_webhook_commit() returns trigger language plpgsql as $$
      begin
        if new.job_id = ${sql.lit(jobId)} then raise exception 'injected commit failure'; end if;
        return new;
      end $$`.execute(ctx.database.db);
    await sql`create constraint trigger fail_webhook_commit after insert on job_events
      deferrable initially deferred for each row execute function fail_webhook_commit()`.execute(ctx.database.db);
    try {
      await expect(deliverSlot(ctx.database, deliveryOf(jobId, 0, 0))).rejects.toThrow(/injected commit failure/);
    } finally {
      await sql`drop trigger fail_webhook_commit on job_events`.execute(ctx.database.db);
    }
    expect(await rowsOf(ctx.database, jobId)).toEqual([]);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    expect((await rowsOf(ctx.database, jobId)).map((r) => [r.seq, r.event_type])).toEqual([[1, 'image.delivered']]);
  });

  it('claims due rows once: concurrent claimers never get the same row', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [12], ['image.delivered']);
    for (let slot = 0; slot < 12; slot++) await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot));
    const got = await withSecondConnection(ctx, async (other) => {
      const rounds = await Promise.all([
        ...[0, 1, 2].map(() => claimWebhookDeliveries(ctx.database, 'owner-a', 3, 60_000)),
        ...[0, 1, 2].map(() => claimWebhookDeliveries(other, 'owner-b', 3, 60_000)),
      ]);
      return rounds.flat().filter((d) => d.jobId === jobId);
    });
    const ids = got.map((d) => d.id);
    expect(new Set(ids).size).toBe(ids.length);
    // Whatever the first rounds left is still there for a later claim; nothing twice, nothing lost.
    const rest = await claimAll(ctx.database, 'owner-c', jobId);
    expect([...ids, ...rest.map((d) => d.id)].sort()).toEqual(Array.from({ length: 12 }, (_, i) => `msg_${jobId}_${i + 1}`).sort());
    // Claimed rows are not due again within their lease.
    expect(await claimAll(ctx.database, 'owner-d', jobId)).toEqual([]);
  });

  // PostgreSQL only: PGlite serves one session, so no other session can hold a row lock.
  if (ctx.kind === 'postgres') it('skips a row another session has locked instead of waiting for it', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [2], ['image.delivered']);
    for (const slot of [0, 1]) await deliverSlot(ctx.database, deliveryOf(jobId, 0, slot));
    const client = new pg.Client({ connectionString: ctx.config.databaseUrl });
    await client.connect();
    try {
      await client.query('begin');
      await client.query('select 1 from webhook_deliveries where id = $1 for update', [`msg_${jobId}_1`]);
      const started = Date.now();
      const claimed = await claimAll(ctx.database, 'owner-a', jobId);
      expect(Date.now() - started).toBeLessThan(2000);
      expect(claimed.map((d) => d.id)).toEqual([`msg_${jobId}_2`]);
    } finally {
      await client.query('rollback');
      await client.end();
    }
    expect((await claimAll(ctx.database, 'owner-b', jobId)).map((d) => d.id)).toEqual([`msg_${jobId}_1`]);
  });

  it('a claim lapses after its lease: another dispatcher retries, and the late one no longer reschedules it', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [1], ['image.delivered']);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    const [claimed] = await claimAll(ctx.database, 'dead', jobId, 1);
    await new Promise((resolve) => setTimeout(resolve, 20));
    const [retaken] = await claimAll(ctx.database, 'alive', jobId);
    expect(retaken?.id).toBe(claimed?.id);
    // The dead one's late failure is recorded as an attempt, but the schedule stays the new owner's.
    await recordWebhookAttempt(ctx.database, failure(claimed!.id, 'dead', { retryDelayMs: 0 }));
    expect(await claimAll(ctx.database, 'third', jobId)).toEqual([]);
    expect(await recordWebhookAttempt(ctx.database, failure(claimed!.id, 'alive', { statusCode: 204, delivered: true }))).toBe('delivered');
    const [listed] = await listWebhookDeliveries(ctx.database, jobId);
    expect(listed).toMatchObject({ status: 'delivered', nextAttemptAt: null });
    expect(listed?.attempts.map((a) => [a.attempt, a.statusCode])).toEqual([
      [1, 500],
      [2, 204],
    ]);
  });

  it('after a failure the next attempt waits the backoff, never past the window end; retry_attempt counts the failures', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [1], ['image.delivered']);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    const id = `msg_${jobId}_1`;
    const next = async () => {
      const row = await ctx.database.db
        .selectFrom('webhook_deliveries')
        .select([sql<number>`extract(epoch from (next_attempt_at - now())) * 1000`.as('inMs'), sql<number>`extract(epoch from (window_from - now())) * 1000`.as('windowFromMs'), 'retry_attempt', 'status'])
        .where('id', '=', id)
        .executeTakeFirstOrThrow();
      return { ...row, inMs: Number(row.inMs), windowFromMs: Number(row.windowFromMs) };
    };
    let [claimed] = await claimAll(ctx.database, 'me', jobId);
    expect(claimed?.retryAttempt).toBe(0);
    expect(await recordWebhookAttempt(ctx.database, failure(id, 'me', { retryDelayMs: 60_000, statusCode: null, error: 'timeout' }))).toBe('pending');
    let state = await next();
    expect(state.retry_attempt).toBe(1);
    expect(state.inMs).toBeGreaterThan(55_000);
    expect(state.inMs).toBeLessThan(61_000);
    expect(await claimAll(ctx.database, 'me', jobId)).toEqual([]);

    await dueNow(ctx.database, jobId);
    [claimed] = await claimAll(ctx.database, 'me', jobId);
    expect(claimed?.retryAttempt).toBe(1);
    // A delay past the window's end is cut to it: the last attempt comes at the end of the window.
    await recordWebhookAttempt(ctx.database, failure(id, 'me', { retryDelayMs: 10 * 3_600_000, retryWindowMs: 3_600_000 }));
    state = await next();
    expect(state.retry_attempt).toBe(2);
    expect(state.inMs - state.windowFromMs).toBeGreaterThan(3_590_000);
    expect(state.inMs - state.windowFromMs).toBeLessThan(3_610_000);
  });

  it('a failure after the retry window marks the delivery failed, visible with its attempts; redelivery makes it pending again and keeps them', async () => {
    const { jobId } = await seedWebhookJob(ctx.database, [1], ['image.delivered', 'job.finished']);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    const [image, finished] = await claimAll(ctx.database, 'me', jobId);
    expect(await recordWebhookAttempt(ctx.database, failure(image!.id, 'me', { statusCode: null, error: 'connection_refused', retryWindowMs: 1 }))).toBe('failed');
    expect(await recordWebhookAttempt(ctx.database, failure(finished!.id, 'me', { statusCode: 200, delivered: true }))).toBe('delivered');
    const listed = await listWebhookDeliveries(ctx.database, jobId);
    expect(listed.map((d) => [d.type, d.status, d.attempts.map((a) => a.statusCode ?? a.error), d.nextAttemptAt])).toEqual([
      ['image.delivered', 'failed', ['connection_refused'], null],
      ['job.finished', 'delivered', [200], null],
    ]);
    expect(listed[0]?.finishedAt).not.toBeNull();
    expect(await claimAll(ctx.database, 'me', jobId)).toEqual([]);

    expect(await redeliverWebhooks(ctx.database, jobId)).toBe(2);
    const again = await claimAll(ctx.database, 'me', jobId);
    expect(again.map((d) => [d.eventType, d.retryAttempt, d.attempts])).toEqual([
      ['image.delivered', 0, 1],
      ['job.finished', 0, 1],
    ]);
    await recordWebhookAttempt(ctx.database, failure(again[0]!.id, 'me', { statusCode: 200, delivered: true }));
    const after = await listWebhookDeliveries(ctx.database, jobId);
    expect(after[0]).toMatchObject({ status: 'delivered' });
    expect(after[0]?.attempts.map((a) => a.statusCode ?? a.error)).toEqual(['connection_refused', 200]);
    expect(after[1]).toMatchObject({ status: 'pending' });
  });

  it('one secret per user, made on first use, usable by standardwebhooks', async () => {
    const userId = uid('user');
    const secret = await getWebhookSecret(ctx.database, userId);
    expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    expect(await Promise.all([getWebhookSecret(ctx.database, userId), getWebhookSecret(ctx.database, userId)])).toEqual([secret, secret]);
    expect(await getWebhookSecret(ctx.database, uid('user'))).not.toBe(secret);
    expect(() => new Webhook(secret)).not.toThrow();
  });
});
