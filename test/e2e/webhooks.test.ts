/**
 * Signed webhooks end to end, through the built CLI as child processes and a real receiver
 * (node:http in this test, verifying every request with standardwebhooks):
 *
 * - embedded (PGlite): `imagegen run` of a job with a webhook delivers `job.finished`
 *   before it exits; `imagegen webhooks <jobId> --json` lists it; `webhooks secret --json`
 *   is the secret the receiver verified with; an unknown job exits 2;
 * - PostgreSQL: `imagegen submit` + `imagegen worker`; the receiver fails the first requests
 *   (500, a hang past the timeout, a connection reset); the worker is SIGKILLed mid-job and
 *   another one started: every subscribed event arrives, signed, none lost; the last worker
 *   stops on SIGTERM with exit 0;
 * - PostgreSQL: a receiver that is down for the whole (short) retry window: the delivery
 *   ends `failed`, visible in `imagegen webhooks <jobId> --json`; `--redeliver` makes it
 *   pending again with its attempts kept.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { logLines, waitFor } from '../support/cli.js';
import { httpCall, inputPng, TOKENS } from '../support/http-service.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { jobSpec, parseSingleJson, type Summary } from '../support/cli-workspace.js';
import { closedPort } from '../support/closed-port.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { startWebhookReceiver, type WebhookReceiver } from '../support/webhook-receiver.js';

const FAST_WEBHOOKS = {
  IMAGEGEN_WEBHOOK_ALLOW_LOCAL: '1',
  IMAGEGEN_WEBHOOK_TIMEOUT_MS: '600',
  IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS: '50',
  IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS: '200',
  IMAGEGEN_WEBHOOK_POLL_MS: '100',
  IMAGEGEN_LOG_LEVEL: 'warn',
};

interface Listed {
  jobId: string;
  url: string | null;
  events: string[];
  deliveries: { id: string; type: string; status: string; attempts: { statusCode: number | null; error: string | null }[]; nextAttemptAt: string | null }[];
}

async function secretOf(suite: CliSuite, userId: string): Promise<string> {
  const answer = await suite.run(['webhooks', 'secret', userId, '--json']);
  expect(answer.code, answer.stderr).toBe(0);
  const parsed = parseSingleJson<{ userId: string; secret: string }>(answer.stdout);
  expect(parsed.userId).toBe(userId);
  return parsed.secret;
}

async function listed(suite: CliSuite, jobId: string, ...extra: string[]): Promise<Listed> {
  const answer = await suite.run(['webhooks', jobId, '--json', ...extra]);
  expect(answer.code, answer.stderr).toBe(0);
  return parseSingleJson<Listed>(answer.stdout);
}

describe('webhooks: imagegen run on the embedded database', () => {
  const USER = 'hook-user';
  let suite: CliSuite;
  let receiver: WebhookReceiver;
  beforeAll(async () => {
    receiver = await startWebhookReceiver();
    suite = await openCliSuite({ env: FAST_WEBHOOKS, grants: { [USER]: 100 } });
    receiver.setSecret(await secretOf(suite, USER));
  }, 60_000);
  afterAll(async () => {
    await suite?.close();
    await receiver?.close();
  });

  it('delivers job.finished, signed, before run exits; the deliveries are listed; an unknown job exits 2', async () => {
    const JOB = 'hook-run-1';
    const file = await suite.ws.writeJob('job.json', { ...(jobSpec(JOB, USER, [['a fox', 2]]) as object), webhook: { url: receiver.url } });
    const run = await suite.run(['run', file, '--json']);
    expect(run.code, run.stderr).toBe(0);
    const summary = parseSingleJson<Summary>(run.stdout);
    // Sent (and answered) before run exited: run waits for its job's first attempts.
    const delivered = receiver.delivered().filter((r) => r.id === `msg_${JOB}_4`);
    expect(delivered).toHaveLength(1);
    expect(delivered[0]?.verified?.type).toBe('job.finished');
    expect(delivered[0]?.verified?.data).toEqual(JSON.parse(JSON.stringify(summary)));
    const list = await listed(suite, JOB);
    expect(list).toMatchObject({ jobId: JOB, url: receiver.url, events: ['job.finished'] });
    expect(list.deliveries.map((d) => [d.id, d.type, d.status, d.attempts.map((a) => a.statusCode ?? a.error)])).toEqual([[`msg_${JOB}_4`, 'job.finished', 'delivered', [200]]]);

    const unknown = await suite.run(['webhooks', 'no-such-job', '--json']);
    expect(unknown.code).toBe(2);
    expect(JSON.parse(unknown.stdout).error.code).toBe('invalid_input');
  }, 60_000);

  it('refuses a webhook to this machine without IMAGEGEN_WEBHOOK_ALLOW_LOCAL, naming webhook.url (exit 2)', async () => {
    const file = await suite.ws.writeJob('local.json', { ...(jobSpec('hook-run-2', USER, [['a fox', 1]]) as object), webhook: { url: receiver.url } });
    const run = await suite.run(['run', file, '--json'], { env: { ...suite.env, IMAGEGEN_WEBHOOK_ALLOW_LOCAL: undefined } });
    expect(run.code).toBe(2);
    expect(JSON.parse(run.stdout).error.problems).toEqual([
      { field: 'webhook.url', rule: 'must use https: http to localhost or 127.0.0.1 needs IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1 (for tests)', message: expect.any(String) },
    ]);
  }, 60_000);
});

describe('webhooks: imagegen serve on the embedded database (its dispatcher sends what the jobs it runs log)', () => {
  let suite: CliSuite;
  let receiver: WebhookReceiver;
  beforeAll(async () => {
    receiver = await startWebhookReceiver();
    suite = await openCliSuite({ env: { ...FAST_WEBHOOKS, IMAGEGEN_LOG_LEVEL: 'info', IMAGEGEN_API_TOKENS: `${TOKENS.alice}=alice`, IMAGEGEN_ADMIN_TOKENS: TOKENS.admin } });
  }, 60_000);
  afterAll(async () => {
    await suite?.close();
    await receiver?.close();
  });

  it('a job submitted over HTTP with a webhook: every subscribed event reaches the receiver, signed with the secret GET /v1/webhooks/secret gives', async () => {
    const serve = await suite.start(['serve', '--port', '0']);
    try {
      await waitFor('the service to listen', () => logLines(serve.stderr(), 'serving').length > 0 || serve.child.exitCode !== null, 60_000);
      const url = String(logLines(serve.stderr(), 'serving')[0]?.['url']);
      const secret = await httpCall(url, TOKENS.alice, 'GET', '/v1/webhooks/secret');
      expect(secret.status).toBe(200);
      expect(secret.body).toMatchObject({ userId: 'alice', secret: expect.stringMatching(/^whsec_/) });
      receiver.setSecret(secret.body.secret);
      expect((await httpCall(url, TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 10 })).status).toBe(200);
      const job = { jobId: 'hook-serve-1', stages: [{ quantity: 2, prompt: 'served', 'aspect-ratio': '1:1', inputImageData: (await inputPng()).toString('base64') }], webhook: { url: receiver.url, events: ['image.delivered', 'job.finished'] } };
      expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', job)).status).toBe(201);
      await waitFor('three webhooks delivered', () => new Set(receiver.delivered().filter((r) => r.id.startsWith('msg_hook-serve-1_')).map((r) => r.id)).size === 3, 60_000, 50);
      const types = receiver.delivered().filter((r) => r.id.startsWith('msg_hook-serve-1_')).map((r) => r.verified?.type).sort();
      expect(types).toEqual(['image.delivered', 'image.delivered', 'job.finished']);
      const listedOverHttp = await httpCall(url, TOKENS.alice, 'GET', '/v1/jobs/hook-serve-1/webhooks');
      expect(listedOverHttp.body.deliveries.map((d: { status: string }) => d.status)).toEqual(['delivered', 'delivered', 'delivered']);
    } finally {
      serve.child.kill('SIGTERM');
      expect((await serve.exited).code).toBe(0);
    }
  }, 120_000);
});

describe.skipIf(!TEST_DATABASE_URL)('webhooks: submit + worker on PostgreSQL', () => {
  const USER = 'hook-fleet-user';
  let suite: CliSuite;
  let receiver: WebhookReceiver;
  beforeAll(async () => {
    receiver = await startWebhookReceiver();
    suite = await openCliSuite({ postgres: true, server: { latencyMs: 150 }, env: { ...FAST_WEBHOOKS, IMAGEGEN_LEASE_TTL_SECONDS: '2', IMAGEGEN_CONCURRENCY: '2' }, grants: { [USER]: 100 } });
    receiver.setSecret(await secretOf(suite, USER));
  }, 60_000);
  afterAll(async () => {
    await suite?.close();
    await receiver?.close();
  });

  it('every subscribed event arrives, signed, after failures and across a SIGKILLed worker', async () => {
    const JOB = 'hook-fleet-1';
    const QUANTITY = 6;
    const file = await suite.ws.writeJob(`${JOB}.json`, {
      ...(jobSpec(JOB, USER, [['a fox', QUANTITY]]) as object),
      webhook: { url: receiver.url, events: ['image.delivered', 'stage.finished', 'job.finished'] },
    });
    receiver.script('fail', 'hang', 'reset');
    const submitted = await suite.run(['submit', file, '--json']);
    expect(submitted.code, submitted.stderr).toBe(0);
    const first = await suite.start(['worker']);
    // Mid-way: some images delivered (and their webhooks tried), the job not finished.
    await waitFor('a few webhook requests', () => receiver.received.filter((r) => r.id.startsWith(`msg_${JOB}_`)).length >= 4, 60_000, 20);
    first.child.kill('SIGKILL');
    await first.exited;
    // At info level it says when its signal handlers are in place, before the SIGTERM at the end (everything may be delivered by then).
    const second = await suite.start(['worker'], { env: { ...suite.env, IMAGEGEN_LOG_LEVEL: 'info' } });
    await waitFor('the second worker to start', () => logLines(second.stderr(), 'worker started').length > 0 || second.child.exitCode !== null, 60_000, 20);
    const expected = QUANTITY + 2;
    await waitFor(
      'every webhook delivered',
      () => new Set(receiver.delivered().filter((r) => r.id.startsWith(`msg_${JOB}_`)).map((r) => r.id)).size === expected,
      60_000,
      50,
    );
    const ids = [...new Set(receiver.delivered().filter((r) => r.id.startsWith(`msg_${JOB}_`)).map((r) => r.id))];
    const bodies = ids.map((id) => receiver.delivered().find((r) => r.id === id)!.verified!);
    expect(bodies.filter((b) => b.type === 'image.delivered').map((b) => `${b.data['stage']}.${b.data['slot']}`).sort()).toEqual(['0.0', '0.1', '0.2', '0.3', '0.4', '0.5']);
    expect(bodies.filter((b) => b.type === 'stage.finished').map((b) => b.data['type'])).toEqual(['stage:completed']);
    expect(bodies.filter((b) => b.type === 'job.finished').map((b) => b.data['status'])).toEqual(['completed']);
    // Every request (failed ones too) was signed; the scripted failures were met and retried.
    const mine = receiver.received.filter((r) => r.id.startsWith(`msg_${JOB}_`));
    expect(mine.every((r) => r.verified !== null)).toBe(true);
    expect(mine.slice(0, 3).map((r) => r.behaviour)).toEqual(['fail', 'hang', 'reset']);

    const list = await listed(suite, JOB);
    expect(list.deliveries).toHaveLength(expected);
    expect(list.deliveries.every((d) => d.status === 'delivered' && d.nextAttemptAt === null)).toBe(true);
    const outcomes = list.deliveries.flatMap((d) => d.attempts.map((a) => a.statusCode ?? a.error));
    // Each scripted failure is recorded as what it was, unless the SIGKILL landed between the
    // answer and its record (the hang: before its timeout): then the next worker retried it
    // after the claim lapsed, with no record of the lost attempt (the stressed loop of issue 10
    // saw the reset's record missing). Either way each scripted delivery ended delivered, and
    // nothing but the scripted failures and 200 was recorded.
    expect(outcomes).toContain(200);
    expect(outcomes.filter((o) => ![500, 'connection_reset', 'timeout', 200].includes(o as never)), JSON.stringify(outcomes)).toEqual([]);
    for (const behaviour of ['fail', 'hang', 'reset']) {
      const id = mine.find((r) => r.behaviour === behaviour)!.id;
      expect(list.deliveries.find((d) => d.id === id)?.attempts.at(-1)?.statusCode, behaviour).toBe(200);
    }

    second.child.kill('SIGTERM');
    const stopped = await second.exited;
    expect(stopped.code, stopped.stderr).toBe(0);
  }, 120_000);

  it('a receiver down for the whole retry window: the delivery ends failed and is listed; --redeliver makes it pending again', async () => {
    const JOB = 'hook-fleet-down';
    const port = await closedPort();
    const file = await suite.ws.writeJob(`${JOB}.json`, { ...(jobSpec(JOB, USER, [['a fox', 1]]) as object), webhook: { url: `http://127.0.0.1:${port}/hooks` } });
    const env = { ...suite.env, IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS: '2' };
    const submitted = await suite.run(['submit', file, '--json'], { env });
    expect(submitted.code, submitted.stderr).toBe(0);
    const worker = await suite.start(['worker'], { env });
    let list: Listed | undefined;
    await waitFor(
      'the delivery to fail',
      async () => {
        list = await listed(suite, JOB);
        return list.deliveries[0]?.status === 'failed';
      },
      60_000,
      300,
    );
    worker.child.kill('SIGTERM');
    expect((await worker.exited).code).toBe(0);
    const [delivery] = list!.deliveries;
    expect(delivery).toMatchObject({ id: `msg_${JOB}_3`, type: 'job.finished', status: 'failed', nextAttemptAt: null });
    expect(delivery!.attempts.length).toBeGreaterThanOrEqual(2);
    expect(new Set(delivery!.attempts.map((a) => a.error))).toEqual(new Set(['connection_refused']));

    const redelivered = await listed(suite, JOB, '--redeliver');
    expect(redelivered).toMatchObject({ redelivered: 1 });
    expect(redelivered.deliveries[0]).toMatchObject({ status: 'pending', attempts: delivery!.attempts });
  }, 120_000);
});
