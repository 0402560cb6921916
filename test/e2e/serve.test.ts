/**
 * `imagegen serve` as a user runs it: the CLI (built from `src/`) in a child process, spoken
 * to over HTTP. On the embedded defaults it runs the jobs it accepts in process, and a
 * restart after SIGKILL resumes a job it left unfinished; on PostgreSQL it only submits
 * and reads, and a separate `imagegen worker` process runs the job while the service's
 * event stream follows it. The fake Gemini server's calls are held and let go by the test.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { Gate } from '../support/gate.js';
import { logLines, textLines, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { httpCall, inputPng, openEvents, TOKENS } from '../support/http-service.js';
import { parseExposition, sampleOf } from '../support/prometheus-text.js';
import { startTcpProxy } from '../support/tcp-proxy.js';

/** `GET /metrics` of a running service, parsed (no token needed). */
async function scrape(url: string) {
  const response = await fetch(`${url}/metrics`);
  expect(response.status).toBe(200);
  return parseExposition(await response.text());
}

/** Waits until the service counted `images` deliveries (its runs' events reach the counters just after the commits). */
async function deliveredCounted(url: string, images: number): Promise<void> {
  await waitFor(`the service to count ${images} deliveries`, async () => sampleOf(await scrape(url), 'imagegen_images_delivered_total') >= images, 20_000, 100);
  expect(sampleOf(await scrape(url), 'imagegen_images_delivered_total')).toBe(images);
}

const TOKEN_ENV = {
  IMAGEGEN_API_TOKENS: `${TOKENS.alice}=alice,${TOKENS.bob}=bob`,
  IMAGEGEN_ADMIN_TOKENS: TOKENS.admin,
  IMAGEGEN_LOG_LEVEL: 'info',
};

async function serving(proc: CliProcess): Promise<string> {
  await waitFor('the service to listen', () => logLines(proc.stderr(), 'serving').length > 0 || proc.child.exitCode !== null, 60_000);
  const line = logLines(proc.stderr(), 'serving')[0];
  if (!line) throw new Error(`serve exited: ${proc.stderr().slice(-2000)}`);
  return String(line['url']);
}

/** SIGTERM: exit 0, having said so in its log; its stderr is JSON log lines only, first to last. */
async function stop(proc: CliProcess): Promise<void> {
  proc.child.kill('SIGTERM');
  const ended = await proc.exited;
  expect(ended.code, ended.stderr.slice(-2000)).toBe(0);
  expect(logLines(ended.stderr, 'signal received: finishing in-flight attempts')).toEqual([expect.objectContaining({ level: 30, signal: 'SIGTERM' })]);
  expect(textLines(ended.stderr)).toEqual([]);
}

const job = async (jobId: string, quantity: number) => ({ jobId, stages: [{ quantity, prompt: `serve ${jobId}`, 'aspect-ratio': '1:1', inputImageData: (await inputPng()).toString('base64') }] });

describe('imagegen serve [pglite, embedded: jobs run in the service]', () => {
  let suite: CliSuite;
  let gate: Gate;
  beforeAll(async () => {
    gate = new Gate();
    suite = await openCliSuite({ built: false, server: { hold: (call) => gate.hold(call) }, env: TOKEN_ENV });
  });
  afterAll(async () => {
    gate?.open();
    await suite?.close();
  });

  it('refuses to start without a token, and --with-worker without DATABASE_URL (exit 2, naming what to set)', async () => {
    const bare = await suite.run(['serve', '--port', '0'], { env: { ...suite.env, IMAGEGEN_API_TOKENS: undefined, IMAGEGEN_ADMIN_TOKENS: undefined } });
    expect(bare.code).toBe(2);
    expect(bare.stderr).toContain('IMAGEGEN_API_TOKENS: serve needs at least one token');
    const worker = await suite.run(['serve', '--port', '0', '--with-worker']);
    expect(worker.code).toBe(2);
    expect(worker.stderr).toContain('--with-worker: needs DATABASE_URL');
  });

  it('accepts, runs and streams a job; serves its images; after a SIGKILL mid-job a restart resumes it to the end', { timeout: 120_000 }, async () => {
    gate.open();
    let serve = await suite.start(['serve', '--port', '0']);
    let url = await serving(serve);
    expect((await httpCall(url, null, 'GET', '/readyz')).body).toEqual({ ready: true, database: 'ok', storage: 'ok' });
    expect((await httpCall(url, TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 20 })).status).toBe(200);
    const submitted = await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await job('e2e-1', 3));
    expect(submitted.status).toBe(201);
    const frames = await (await openEvents({ url }, TOKENS.alice, 'e2e-1')).rest();
    expect(frames[0]?.event).toBe('snapshot');
    expect(frames.at(-1)).toMatchObject({ event: 'job:finished', data: { status: 'completed' } });
    const image = await fetch(`${url}/v1/jobs/e2e-1/images/0/2`, { headers: { authorization: `Bearer ${TOKENS.alice}` } });
    expect(Buffer.from(await image.arrayBuffer()).subarray(8, 12).toString('latin1')).toBe('WEBP');
    // The service's metrics count the job it ran in process, and read the credits the summary shows.
    await deliveredCounted(url, 3);
    expect(sampleOf(await scrape(url), 'imagegen_credits_captured_total')).toBe(3);

    // Mid-job: the provider's calls are held, the job has begun; the service dies.
    gate = new Gate();
    const calls = suite.server.calls();
    expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await job('e2e-2', 4))).status).toBe(201);
    await suite.server.received(calls + 1);
    serve.child.kill('SIGKILL');
    await serve.exited;

    serve = await suite.start(['serve', '--port', '0']);
    url = await serving(serve);
    gate.open();
    const resumed = await (await openEvents({ url }, TOKENS.alice, 'e2e-2')).rest();
    expect(resumed.at(-1)).toMatchObject({ event: 'job:finished', data: { status: 'completed' } });
    expect(logLines(serve.stderr(), 'unfinished job of a previous process: resuming').map((l) => l['jobId'])).toEqual(['e2e-2']);
    const summary = (await httpCall(url, TOKENS.alice, 'GET', '/v1/jobs/e2e-2')).body;
    expect(summary).toMatchObject({ status: 'completed', deliveredImages: 4, credits: { reserved: 4, captured: 4, released: 0 } });
    await stop(serve);
    expect(serve.stderr()).not.toContain(TOKENS.alice);
  });
});

if (!TEST_DATABASE_URL) console.warn('e2e imagegen serve on PostgreSQL skipped: DATABASE_URL not set');

describe.skipIf(!TEST_DATABASE_URL)('imagegen serve [postgres, a separate imagegen worker runs the jobs]', () => {
  let suite: CliSuite;
  beforeAll(async () => {
    suite = await openCliSuite({ built: false, postgres: true, server: { latencyMs: 20 }, env: TOKEN_ENV });
  });
  afterAll(() => suite?.close());

  it('submits to the queue; the worker process runs the job; the service streams its events from the database and serves its images', { timeout: 120_000 }, async () => {
    // Started together on a fresh database: both create the queue at once (a race pg-boss alone loses).
    const serve = await suite.start(['serve', '--port', '0']);
    const worker = await suite.start(['worker']);
    try {
      const url = await serving(serve);
      expect(logLines(serve.stderr(), 'serving')[0]).toMatchObject({ database: 'postgres', jobs: 'queue' });
      expect((await httpCall(url, null, 'GET', '/readyz')).status).toBe(200);
      expect((await httpCall(url, TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 20 })).status).toBe(200);
      expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await job('pg-e2e-1', 5))).status).toBe(201);
      const stream = await openEvents({ url }, TOKENS.alice, 'pg-e2e-1');
      const first = [await stream.next(), await stream.next()];
      expect(first[0]?.event).toBe('snapshot');
      // Hang up after the first event, come back with its id: the rest, once each.
      stream.close();
      const rest = await (await openEvents({ url }, TOKENS.alice, 'pg-e2e-1', first[1]?.id ?? 0)).rest();
      const events = [first[1], ...rest];
      expect(events.at(-1)).toMatchObject({ event: 'job:finished', data: { status: 'completed' } });
      const ids = events.map((f) => f?.id);
      expect(new Set(ids).size).toBe(ids.length);
      const delivered = new Set([...(first[0]?.data.attachIds ?? []), ...events.filter((f) => f?.event === 'slot:delivered').map((f) => f?.data.attachId)]);
      expect(delivered.size).toBe(5);
      expect(worker.stderr()).toContain('pg-e2e-1');
      const image = await fetch(`${url}/v1/jobs/pg-e2e-1/images/0/4`, { headers: { authorization: `Bearer ${TOKENS.alice}` } });
      expect(image.status).toBe(200);
      expect(Buffer.from(await image.arrayBuffer()).subarray(0, 4).toString('latin1')).toBe('RIFF');
    } finally {
      await stop(serve);
      await stop(worker);
    }
  });

  it('/readyz is 503 naming the database while PostgreSQL cannot be reached (a cut TCP proxy), 200 again once it can; /healthz stays 200', { timeout: 120_000 }, async () => {
    const target = new URL(String(suite.env['DATABASE_URL']));
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const viaProxy = new URL(target);
    viaProxy.hostname = '127.0.0.1';
    viaProxy.port = String(proxy.port);
    const serve = await suite.start(['serve', '--port', '0'], { env: { ...suite.env, DATABASE_URL: viaProxy.toString() } });
    try {
      const url = await serving(serve);
      expect((await httpCall(url, null, 'GET', '/readyz')).status).toBe(200);
      proxy.cut();
      const down = await httpCall(url, null, 'GET', '/readyz');
      expect(down.status).toBe(503);
      expect(down.body).toMatchObject({ ready: false, database: 'unavailable', storage: 'ok' });
      expect((await httpCall(url, null, 'GET', '/healthz')).status).toBe(200);
      proxy.restore();
      await waitFor('/readyz to answer 200 again', async () => (await httpCall(url, null, 'GET', '/readyz')).status === 200, 30_000, 200);
    } finally {
      proxy.restore();
      await stop(serve);
      await proxy.close();
    }
  });

  it('submit --open prints a signed link (IMAGEGEN_PUBLIC_URL) that the service accepts: traded for a one-job session, the page renders the job', { timeout: 120_000 }, async () => {
    const serve = await suite.start(['serve', '--port', '0', '--with-worker']);
    try {
      const url = await serving(serve);
      expect((await suite.run(['credits', 'grant', 'carol', '5'])).code).toBe(0);
      const file = await suite.ws.writeJob('open.json', { jobId: 'pg-open-1', userId: 'carol', stages: [{ prompt: 'open', quantity: 2, 'aspect-ratio': '1:1', inputImage: 'input.png' }] });
      const submitted = await suite.run(['submit', file, '--open', '--json'], { env: { ...suite.env, IMAGEGEN_PUBLIC_URL: `${url}/` } });
      expect(submitted.code, submitted.stderr).toBe(0);
      const answer = JSON.parse(submitted.stdout);
      expect(Object.keys(answer).sort()).toEqual(['created', 'jobId', 'pageUrl', 'pageUrlExpiresAt']);
      expect(answer.pageUrl).toMatch(new RegExp(`^${url}/jobs/pg-open-1\\?link=link\\.`));
      // The default lifetime: one hour from now.
      expect(Math.abs(Date.parse(answer.pageUrlExpiresAt) - Date.now() - 3_600_000)).toBeLessThan(120_000);
      const opened = await fetch(answer.pageUrl, { redirect: 'manual' });
      expect(opened.status).toBe(303);
      expect(opened.headers.get('location')).toBe('/jobs/pg-open-1');
      const cookie = (opened.headers.get('set-cookie') ?? '').split(';')[0] as string;
      await waitFor('the job to end', async () => (await httpCall(url, null, 'GET', '/v1/jobs/pg-open-1', undefined, { cookie })).body.status === 'completed', 60_000, 200);
      const page = await httpCall(url, null, 'GET', '/jobs/pg-open-1', undefined, { cookie });
      expect(page.status).toBe(200);
      expect(page.body).toContain('<progress id="progress-total" max="2" value="2">2/2</progress>');
      // The session opens that job only.
      expect((await httpCall(url, null, 'GET', '/v1/jobs', undefined, { cookie })).status).toBe(403);
      // Without --open, submit's answer is as before.
      const plain = await suite.run(['submit', file, '--json']);
      expect(JSON.parse(plain.stdout)).toEqual({ jobId: 'pg-open-1', created: false });
    } finally {
      await stop(serve);
    }
  });

  it('--with-worker runs a worker in the service process: it alone takes a job to the end', { timeout: 120_000 }, async () => {
    const serve = await suite.start(['serve', '--port', '0', '--with-worker']);
    try {
      const url = await serving(serve);
      expect(logLines(serve.stderr(), 'serving')[0]).toMatchObject({ jobs: 'queue, and a worker in process' });
      expect((await httpCall(url, TOKENS.admin, 'POST', '/v1/credits/bob', { amount: 5 })).status).toBe(200);
      expect((await httpCall(url, TOKENS.bob, 'POST', '/v1/jobs', await job('pg-e2e-2', 2))).status).toBe(201);
      const frames = await (await openEvents({ url }, TOKENS.bob, 'pg-e2e-2')).rest();
      expect(frames.at(-1)).toMatchObject({ event: 'job:finished', data: { status: 'completed' } });
      expect(logLines(serve.stderr(), 'job taken').map((l) => l['jobId'])).toContain('pg-e2e-2');
      // The in-process worker's runs feed the service's /metrics.
      await deliveredCounted(url, 2);
    } finally {
      await stop(serve);
    }
  });
});
