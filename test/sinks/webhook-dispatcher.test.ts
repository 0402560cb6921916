/**
 * The dispatcher against a real receiver (node:http, verifying every request with
 * standardwebhooks) and a real database: a delivery that meets a 500, a hang past the
 * timeout, a connection reset and a redirect is retried with backoff until a 2xx, each
 * attempt recorded with its status or error kind; a target refused by address is never
 * connected to; a shutdown abandons an in-flight send cleanly (claim given back), and one
 * that comes while a claim is on its way waits for it and gives what it took back.
 */
import type { KyselyPlugin, RawNode } from 'kysely';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { deliverSlot, finishJob, getWebhookSecret, grantCredits, listWebhookDeliveries, submitJob, type Database } from '../../src/db/index.js';
import type { WebhookEventType } from '../../src/domain/webhook.js';
import { jobSummary } from '../../src/jobs/job-summary.js';
import { WebhookDispatcher, type WebhookDispatcherOptions } from '../../src/sinks/webhook-dispatcher.js';
import { deliveryOf, inputAttachment, makeSpec, resultFromDatabase, uid, until } from '../db/fixtures.js';
import { forEachDatabase } from '../support/databases.js';
import { startWebhookReceiver, type WebhookReceiver } from '../support/webhook-receiver.js';

async function seedWebhookJob(database: Database, url: string, quantities: readonly number[], events: readonly WebhookEventType[]) {
  const userId = uid('user');
  await grantCredits(database, userId, 1000);
  const spec = { ...makeSpec(userId, quantities, await inputAttachment(database, userId)), webhook: { url, events } };
  const { jobId } = await submitJob(database, { spec, pricePerImage: 1 });
  return { userId, jobId, secret: await getWebhookSecret(database, userId) };
}

/**
 * A kysely plugin that holds the answer of the dispatcher's claim statement (the statement
 * has run: its rows are claimed in the database): `ran` resolves when it has, `answer()`
 * lets the answer through.
 */
function holdClaims(): { plugin: KyselyPlugin; ran: Promise<void>; answer: () => void } {
  const claims = new WeakSet<object>();
  let claimed!: () => void;
  const ran = new Promise<void>((resolve) => (claimed = resolve));
  let answer!: () => void;
  const released = new Promise<void>((resolve) => (answer = resolve));
  const plugin: KyselyPlugin = {
    transformQuery(args) {
      if (args.node.kind === 'RawNode' && (args.node as RawNode).sqlFragments.join('').includes('claimed_by =')) claims.add(args.queryId);
      return args.node;
    },
    async transformResult(args) {
      if (claims.has(args.queryId)) {
        claimed();
        await released;
      }
      return args.result;
    },
  };
  return { plugin, ran, answer };
}

const FAST: WebhookDispatcherOptions = { timeoutMs: 400, backoffBaseMs: 20, backoffMaxMs: 60, pollMs: 50, allowLocal: true, random: () => 0.5 };

forEachDatabase('webhook dispatcher', (ctx) => {
  let receiver: WebhookReceiver;
  const dispatchers: WebhookDispatcher[] = [];
  const start = (options: WebhookDispatcherOptions = {}) => {
    const dispatcher = new WebhookDispatcher({ database: ctx.database, describeJob: (jobId) => jobSummary(ctx.database, jobId) }, { ...FAST, ...options });
    dispatchers.push(dispatcher);
    dispatcher.start();
    return dispatcher;
  };
  beforeAll(async () => {
    receiver = await startWebhookReceiver();
  });
  afterAll(async () => {
    await Promise.all(dispatchers.map((d) => d.stop(0)));
    await receiver.close();
  });

  it('retries through a 500, a hang, a reset and a redirect, then delivers; every request signed, every attempt recorded', async () => {
    const { jobId, secret } = await seedWebhookJob(ctx.database, receiver.url, [1], ['job.finished']);
    receiver.setSecret(secret);
    receiver.script('fail', 'hang', 'reset', 'redirect');
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    const dispatcher = start();
    try {
      await until(() => receiver.delivered().some((r) => r.id === `msg_${jobId}_3`), 15_000);
    } catch (error) {
      console.log(receiver.received.map((r) => [r.id, r.behaviour, r.verified !== null]), JSON.stringify(await listWebhookDeliveries(ctx.database, jobId)));
      throw error;
    } finally {
      await dispatcher.stop();
    }
    const mine = receiver.received.filter((r) => r.id === `msg_${jobId}_3`);
    expect(mine.map((r) => r.behaviour)).toEqual(['fail', 'hang', 'reset', 'redirect', 'ok']);
    // Signed every time, with the same webhook-id; the redirect was not followed.
    expect(mine.every((r) => r.verified !== null && r.path === '/hooks')).toBe(true);
    const body = mine.at(-1)!.verified!;
    expect(body.type).toBe('job.finished');
    expect(body.data).toEqual(JSON.parse(JSON.stringify(await jobSummary(ctx.database, jobId))));
    const [listed] = await listWebhookDeliveries(ctx.database, jobId);
    expect(listed?.status).toBe('delivered');
    expect(listed?.attempts.map((a) => a.statusCode ?? a.error)).toEqual([500, 'timeout', 'connection_reset', 302, 200]);
    // The hang took the timeout, not longer.
    expect(listed?.attempts[1]?.durationMs).toBeGreaterThanOrEqual(350);
    expect(listed?.attempts[1]?.durationMs).toBeLessThan(2000);
  });

  it('sends image.delivered and stage.finished with their logged events', async () => {
    const { jobId, secret } = await seedWebhookJob(ctx.database, receiver.url, [2], ['image.delivered', 'stage.finished']);
    receiver.setSecret(secret);
    const dispatcher = start();
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    await until(() => receiver.delivered().filter((r) => r.id.startsWith(`msg_${jobId}_`)).length === 3, 10_000);
    await dispatcher.stop();
    const bodies = receiver.delivered().filter((r) => r.id.startsWith(`msg_${jobId}_`)).map((r) => r.verified!);
    expect(bodies.map((b) => b.type).sort()).toEqual(['image.delivered', 'image.delivered', 'stage.finished']);
    expect(bodies.find((b) => b.type === 'stage.finished')?.data).toEqual({ type: 'stage:completed', jobId, stage: 0, quantity: 2, delivered: 2, seq: 3 });
    expect(bodies.filter((b) => b.type === 'image.delivered').map((b) => b.data['slot']).sort()).toEqual([0, 1]);
  });

  it('never connects to a refused address: the attempt is recorded as forbidden_address', async () => {
    const { jobId, secret } = await seedWebhookJob(ctx.database, receiver.url, [1], ['image.delivered']);
    receiver.setSecret(secret);
    const before = receiver.received.length;
    const dispatcher = start({ allowLocal: false, retryWindowMs: 1 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    let listed = await listWebhookDeliveries(ctx.database, jobId);
    for (const deadline = Date.now() + 5000; listed[0]?.status !== 'failed' && Date.now() < deadline; ) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      listed = await listWebhookDeliveries(ctx.database, jobId);
    }
    await dispatcher.stop();
    expect(listed[0]?.status).toBe('failed');
    expect(listed[0]?.attempts.map((a) => a.error)).toEqual(['forbidden_address']);
    expect(receiver.received.length).toBe(before);
  });

  it('a shutdown abandons an in-flight send: the claim is given back, due now, no attempt recorded', async () => {
    const { jobId, secret } = await seedWebhookJob(ctx.database, receiver.url, [1], ['image.delivered']);
    receiver.setSecret(secret);
    receiver.script('hang');
    const before = receiver.received.length;
    const dispatcher = start({ timeoutMs: 30_000 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await until(() => receiver.received.length > before, 5000);
    const started = Date.now();
    await dispatcher.stop(50);
    expect(Date.now() - started).toBeLessThan(2000);
    const [listed] = await listWebhookDeliveries(ctx.database, jobId);
    expect(listed?.status).toBe('pending');
    expect(listed?.attempts).toEqual([]);
    expect(new Date(listed!.nextAttemptAt!).getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    // The next dispatcher sends it.
    const next = start();
    await until(() => receiver.delivered().some((r) => r.id === `msg_${jobId}_1`), 5000);
    await next.stop();
  });

  /**
   * A due delivery and a dispatcher (30 s send timeout) whose first claim has run in the
   * database (the row is claimed) while its answer is held (`held.answer()` lets it through).
   */
  async function claimHeldOnItsWay() {
    const { jobId, secret } = await seedWebhookJob(ctx.database, receiver.url, [1], ['image.delivered']);
    receiver.setSecret(secret);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    const held = holdClaims();
    const database: Database = { ...ctx.database, db: ctx.database.db.withPlugin(held.plugin) };
    const before = receiver.received.length;
    const dispatcher = new WebhookDispatcher({ database, describeJob: (id) => jobSummary(ctx.database, id) }, { ...FAST, timeoutMs: 30_000 });
    dispatchers.push(dispatcher);
    dispatcher.start();
    await held.ran;
    return { jobId, held, dispatcher, before };
  }

  it('a stop while a claim is on its way waits for it and gives its claims back: nothing is sent, the delivery is due now, no attempt', async () => {
    const { jobId, held, dispatcher, before } = await claimHeldOnItsWay();
    let stopped = false;
    const stopping = dispatcher.stop(10_000).then(() => (stopped = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(stopped, 'stop waits for the claim on its way (within its grace)').toBe(false);
    held.answer();
    await stopping;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(receiver.received.length).toBe(before);
    const [listed] = await listWebhookDeliveries(ctx.database, jobId);
    expect(listed?.status).toBe('pending');
    expect(listed?.attempts).toEqual([]);
    // Given back (due now), not left claimed for its lease (the 30 s timeout and the margin).
    expect(new Date(listed!.nextAttemptAt!).getTime()).toBeLessThanOrEqual(Date.now() + 1000);
  });

  it('a claim that outlasts the stop\'s grace does not hold the stop; when it lands, what it took is given back, not sent', async () => {
    const { jobId, held, dispatcher, before } = await claimHeldOnItsWay();
    // The grace (50 ms) ends while the claim's answer is held: stop resolves without it.
    await dispatcher.stop(50);
    held.answer();
    // Waits for the event "given back" (the row due now again), not for a time.
    const given = Date.now() + 5000;
    for (;;) {
      const [listed] = await listWebhookDeliveries(ctx.database, jobId);
      if (new Date(listed!.nextAttemptAt!).getTime() <= Date.now() + 1000) break;
      if (Date.now() > given) throw new Error('the claim that landed after the stop was not given back');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(receiver.received.length).toBe(before);
    const [listed] = await listWebhookDeliveries(ctx.database, jobId);
    expect([listed?.status, listed?.attempts]).toEqual(['pending', []]);
  });
});
