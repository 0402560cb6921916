/**
 * Webhooks over HTTP (the real service on PGlite): `POST /v1/jobs` takes a `webhook` (stored
 * with the job, part of its idempotent spec), refuses a bad one field by field;
 * `GET /v1/webhooks/secret` is the caller's own secret (an admin token without a user gets
 * 400); `GET /v1/jobs/:id/webhooks` lists a job's deliveries (another user's job is 404).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { inputPng, startService, TOKENS, type TestService } from '../support/http-service.js';
import { waitFor } from '../support/cli.js';

describe('webhooks over HTTP [pglite]', () => {
  let service: TestService;
  let attachId: string;
  beforeAll(async () => {
    service = await startService({ generator: new OfflineImageGenerator({}), server: { allowLocalWebhooks: true } });
    expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 50 })).status).toBe(200);
    const upload = await service.call(TOKENS.alice, 'POST', '/v1/attachments', new Uint8Array(await inputPng()), { 'content-type': 'image/png' });
    attachId = upload.body.attachId;
  }, 60_000);
  afterAll(async () => {
    await service?.close();
  });

  const job = (jobId: string, webhook: unknown) => ({ jobId, stages: [{ quantity: 1, prompt: 'a fox', mergedImageAttachId: attachId }], webhook });

  it('accepts a webhook, stores it with the job, and a resubmit with another webhook is a conflict', async () => {
    const webhook = { url: 'http://127.0.0.1:9/hooks', events: ['image.delivered', 'job.finished'] };
    const created = await service.call(TOKENS.alice, 'POST', '/v1/jobs', job('http-hook-1', webhook));
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', job('http-hook-1', { ...webhook, events: ['job.finished', 'image.delivered'] }))).status).toBe(200);
    const conflict = await service.call(TOKENS.alice, 'POST', '/v1/jobs', job('http-hook-1', { ...webhook, url: 'http://127.0.0.1:10/hooks' }));
    expect(conflict.status).toBe(409);
    expect(conflict.body.error.problems).toEqual([{ field: 'jobId', rule: 'already names a different job (webhook.url differs)', message: expect.any(String) }]);
    const noHook = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { ...job('http-hook-1', undefined), webhook: undefined });
    expect(noHook.status).toBe(409);
    await waitFor('the job to end', async () => ['completed', 'partial'].includes((await service.call(TOKENS.alice, 'GET', '/v1/jobs/http-hook-1')).body.status), 30_000);
    const listed = await service.call(TOKENS.alice, 'GET', '/v1/jobs/http-hook-1/webhooks');
    expect(listed.status).toBe(200);
    expect(listed.body).toMatchObject({ jobId: 'http-hook-1', url: 'http://127.0.0.1:9/hooks', events: ['image.delivered', 'job.finished'] });
    expect(listed.body.deliveries.map((d: { type: string }) => d.type)).toEqual(['image.delivered', 'job.finished']);
    expect((await service.call(TOKENS.bob, 'GET', '/v1/jobs/http-hook-1/webhooks')).status).toBe(404);
  }, 60_000);

  it('refuses a bad webhook naming each field', async () => {
    const bad = await service.call(TOKENS.alice, 'POST', '/v1/jobs', job('http-hook-2', { url: 'ftp://x.example.com', events: ['job.started'], extra: 1 }));
    expect(bad.status).toBe(400);
    expect(bad.body.error.problems.map((p: { field: string; rule: string }) => [p.field, p.rule])).toEqual([
      ['webhook.extra', 'is not a webhook field (known: url, events)'],
      ['webhook.url', 'must use https, got ftp'],
      ['webhook.events[0]', 'must be one of job.finished, stage.finished, image.delivered, got string "job.started"'],
    ]);
    const privateHost = await service.call(TOKENS.alice, 'POST', '/v1/jobs', job('http-hook-3', { url: 'https://10.0.0.1/x' }));
    // Allowed here (the service runs with allow-local); the address classes are unit-tested.
    expect(privateHost.status).toBe(201);
  });

  it("answers the caller's own secret, the same each time; an admin token without a user gets 400", async () => {
    const first = await service.call(TOKENS.alice, 'GET', '/v1/webhooks/secret');
    expect(first.status).toBe(200);
    expect(first.body).toEqual({ userId: 'alice', secret: expect.stringMatching(/^whsec_/) });
    expect(first.headers.get('cache-control')).toBe('no-store');
    expect((await service.call(TOKENS.alice, 'GET', '/v1/webhooks/secret')).body).toEqual(first.body);
    expect((await service.call(TOKENS.bob, 'GET', '/v1/webhooks/secret')).body.secret).not.toBe(first.body.secret);
    const admin = await service.call(TOKENS.admin, 'GET', '/v1/webhooks/secret');
    expect(admin.status).toBe(400);
    expect(admin.body.error.problems[0].field).toBe('authorization');
    expect((await service.call(null, 'GET', '/v1/webhooks/secret')).status).toBe(401);
  });
});
