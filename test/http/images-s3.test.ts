/**
 * Images of a service whose storage is S3 (s3rver): `GET /v1/jobs/:id/images/:stage/:slot`
 * redirects (302) to a short-lived presigned URL, and the bytes come from the bucket, not
 * through the service.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';
import { inputPng, openEvents, startService, TOKENS, type TestService } from '../support/http-service.js';

describe('the service on S3 storage [pglite]', () => {
  let s3: TestS3Server;
  let store: S3ObjectStore;
  let service: TestService;
  beforeAll(async () => {
    s3 = await startS3Server({ buckets: ['images'] });
    store = new S3ObjectStore({ bucket: 'images', endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials });
    service = await startService({ generator: new OfflineImageGenerator({ seed: 3 }), store, server: { presignExpiresSeconds: 120 } });
  });
  afterAll(async () => {
    await service?.close();
    store?.destroy();
    await s3?.close();
  });

  it('redirects to a presigned URL of the delivered WebP', async () => {
    await service.call(TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 5 });
    const submitted = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { jobId: 's3-1', stages: [{ quantity: 2, prompt: 'p', inputImageData: (await inputPng()).toString('base64') }] });
    expect(submitted.status).toBe(201);
    expect((await (await openEvents(service, TOKENS.alice, 's3-1')).rest()).at(-1)?.data.status).toBe('completed');
    const image = await service.call(TOKENS.alice, 'GET', '/v1/jobs/s3-1/images/0/1');
    expect(image.status).toBe(302);
    expect(image.headers.get('cache-control')).toBe('no-store');
    const location = new URL(image.headers.get('location') as string);
    expect(`${location.origin}${location.pathname}`).toMatch(new RegExp(`^${s3.endpoint}/images/generated/s3-1/0/1-\\d+\\.webp$`));
    expect(location.searchParams.get('X-Amz-Expires')).toBe('120');
    const bytes = Buffer.from(await (await fetch(location)).arrayBuffer());
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('RIFF');
    expect(bytes.subarray(8, 12).toString('latin1')).toBe('WEBP');
    expect((await service.call(TOKENS.bob, 'GET', '/v1/jobs/s3-1/images/0/1')).status).toBe(404);
  });
});
