/**
 * The service's limits over HTTP: the body limit (413), the per-token rate limit (429, per
 * token: one client's burst does not spend another's), the cap on open event streams per
 * token (429), and readiness when a dependency does not answer (503).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { openDatabase } from '../../src/db/index.js';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { closedPort } from '../support/closed-port.js';
import { createScratchDatabase } from '../support/databases.js';
import { Gate } from '../support/gate.js';
import { inputPng, openEvents, startService, TOKENS, type TestService } from '../support/http-service.js';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { waitFor } from '../support/cli.js';

describe('the service\'s limits [pglite]', () => {
  let service: TestService;
  let streams: TestService;
  let gemini: FakeGeminiServer;
  const gate = new Gate();

  beforeAll(async () => {
    gemini = await startFakeGeminiServer({ hold: gate.hold });
    service = await startService({
      generator: new GeminiImageGenerator({ apiKey: gemini.apiKey, baseUrl: gemini.url, timeoutMs: 30_000 }),
      http: { bodyLimitBytes: 64 * 1024, rateLimitPerMinute: 8 },
    });
    // The stream cap's own service: its test makes more requests than the rate limit above allows.
    streams = await startService({
      generator: new GeminiImageGenerator({ apiKey: gemini.apiKey, baseUrl: gemini.url, timeoutMs: 30_000 }),
      http: { maxStreamsPerToken: 2 },
    });
  });
  afterAll(async () => {
    gate.open();
    await service?.close();
    await streams?.close();
    await gemini?.close();
  });

  it('refuses a body over the limit with 413, a job and an upload alike', async () => {
    const big = 'x'.repeat(100 * 1024);
    const job = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { stages: [{ quantity: 1, prompt: 'p', inputImageData: big }] });
    expect(job.status).toBe(413);
    expect(job.body.error.code).toBe('payload_too_large');
    const upload = await service.call(TOKENS.alice, 'POST', '/v1/attachments', new Uint8Array(100 * 1024), { 'content-type': 'image/png' });
    expect(upload.status).toBe(413);
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(100 * 1024)], { type: 'image/png' }), 'big.png');
    expect((await service.call(TOKENS.alice, 'POST', '/v1/attachments', form)).status).toBe(413);
  });

  it('answers 429 past the per-token rate limit, with retry-after; another token is not affected; probes are not limited', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await service.call(TOKENS.carol, 'GET', '/v1/credits')).status);
    expect(statuses.slice(0, 8)).toEqual(Array(8).fill(200));
    expect(statuses.slice(8)).toEqual([429, 429]);
    const limited = await service.call(TOKENS.carol, 'GET', '/v1/credits');
    expect(limited.body.error.code).toBe('rate_limited');
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
    expect((await service.call(TOKENS.bob, 'GET', '/v1/credits')).status).toBe(200);
    for (let i = 0; i < 10; i++) expect((await service.call(null, 'GET', '/healthz')).status).toBe(200);
  });

  it('caps the event streams a token holds open (429), and gives the place back when one closes', async () => {
    await streams.call(TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 10 });
    const data = (await inputPng()).toString('base64');
    // Its calls are held: the job runs while the streams are open.
    expect((await streams.call(TOKENS.alice, 'POST', '/v1/jobs', { jobId: 'streams-1', stages: [{ quantity: 1, prompt: 'p', inputImageData: data }] })).status).toBe(201);
    const one = await openEvents(streams, TOKENS.alice, 'streams-1');
    const two = await openEvents(streams, TOKENS.alice, 'streams-1');
    expect([one.status, two.status]).toEqual([200, 200]);
    expect((await one.next())?.event).toBe('snapshot');
    expect((await two.next())?.event).toBe('snapshot');
    const three = await openEvents(streams, TOKENS.alice, 'streams-1');
    expect(three.status).toBe(429);
    expect(three.body).toMatchObject({ error: { code: 'rate_limited', message: expect.stringContaining('event streams') } });
    // Another token has places of its own.
    expect((await openEvents(streams, TOKENS.admin, 'streams-1')).status).toBe(200);
    one.close();
    // The server sees the hang-up when the socket closes; until then the place is still taken.
    let reopened = await openEvents(streams, TOKENS.alice, 'streams-1');
    await waitFor('the hung-up stream\'s place to come back', async () => {
      if (reopened.status === 200) return true;
      reopened = await openEvents(streams, TOKENS.alice, 'streams-1');
      return reopened.status === 200;
    });
    gate.open();
    expect((await reopened.rest()).at(-1)?.event).toBe('job:finished');
    expect((await two.rest()).at(-1)?.event).toBe('job:finished');
  });
});

describe('GET /metrics [pglite]', () => {
  it('serves the metrics source it is given, without a token; none given, there is no such route', async () => {
    const withMetrics = await startService({ generator: new OfflineImageGenerator(), metrics: { contentType: 'text/plain; version=0.0.4; charset=utf-8', render: async () => 'imagegen_images_delivered_total 0\n' } });
    try {
      const scrape = await withMetrics.call(null, 'GET', '/metrics');
      expect(scrape.status).toBe(200);
      expect(scrape.headers.get('content-type')).toBe('text/plain; version=0.0.4; charset=utf-8');
      expect(scrape.body).toBe('imagegen_images_delivered_total 0\n');
      expect((await withMetrics.call(null, 'GET', '/openapi.json')).body.paths['/metrics']).toBeUndefined();
    } finally {
      await withMetrics.close();
    }
  });
});

describe('readiness when a dependency does not answer [pglite]', () => {
  it('is 503 naming the storage when the store cannot be reached, and the database when it is closed', async () => {
    const scratch = await createScratchDatabase('pglite');
    const database = await openDatabase(scratch.config);
    const store = new S3ObjectStore({ bucket: 'b', endpoint: `http://127.0.0.1:${await closedPort()}`, forcePathStyle: true, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
    const service = await startService({ generator: new OfflineImageGenerator(), database, store });
    try {
      const storage = await service.call(null, 'GET', '/readyz');
      expect(storage.status).toBe(503);
      expect(storage.body).toEqual({ ready: false, database: 'ok', storage: 'unavailable' });
      expect((await service.call(null, 'GET', '/healthz')).status).toBe(200);
      expect((await service.call(null, 'GET', '/metrics')).status).toBe(404);
      await database.close();
      expect((await service.call(null, 'GET', '/readyz')).body).toEqual({ ready: false, database: 'unavailable', storage: 'unavailable' });
    } finally {
      await service.close();
      store.destroy();
      await database.close();
      await scratch.dispose();
    }
  });
});
