/**
 * Presigned S3 GET URLs: AWS's documented example (the signature AWS publishes for it), the
 * AWS SDK's own SigV4 signer on awkward keys, and a real round trip through `S3ObjectStore`
 * to an S3-compatible server (s3rver checks the URL's shape and expiry, not V4 signatures).
 */
import { createHash, createHmac } from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { firstValueFrom } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { presignS3Get, s3ObjectUrl } from '../../src/sinks/s3-presign.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';

const EXAMPLE = { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' };

function bytesOf(data: string | ArrayBuffer | ArrayBufferView): Buffer {
  if (typeof data === 'string') return Buffer.from(data, 'utf8');
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return Buffer.from(data);
}

/** The SDK signer's hash port over node:crypto (plain SHA-256, or HMAC with a secret). */
class Sha256 {
  readonly #hash;
  constructor(secret?: string | ArrayBuffer | ArrayBufferView) {
    this.#hash = secret === undefined ? createHash('sha256') : createHmac('sha256', bytesOf(secret));
  }
  update(data: string | ArrayBuffer | ArrayBufferView): void {
    this.#hash.update(bytesOf(data));
  }
  async digest(): Promise<Uint8Array> {
    return new Uint8Array(this.#hash.digest());
  }
}

describe('presignS3Get', () => {
  it("signs AWS's documented example (examplebucket/test.txt, 2013-05-24, 86400 s) to AWS's published signature", () => {
    const url = s3ObjectUrl({ bucket: 'examplebucket', region: 'us-east-1', endpoint: 'https://s3.amazonaws.com', forcePathStyle: false }, 'test.txt');
    const signed = new URL(presignS3Get(url, { region: 'us-east-1', credentials: EXAMPLE, expiresInSeconds: 86400, now: new Date('2013-05-24T00:00:00Z') }));
    expect(`${signed.origin}${signed.pathname}`).toBe('https://examplebucket.s3.amazonaws.com/test.txt');
    expect(signed.searchParams.get('X-Amz-Credential')).toBe('AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request');
    expect(signed.searchParams.get('X-Amz-Signature')).toBe('aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404');
  });

  it.each([
    ['generated/job-1/0/3-1.webp', false, undefined],
    ['inputs/ab12/some key (1)!*.png', true, 'http://127.0.0.1:9000'],
    ['généré/ünïcode/~tilde+plus=.webp', true, 'https://minio.example.com:8443/base'],
  ])('agrees with the AWS SDK signer on %j (path style %s, endpoint %s)', async (key, forcePathStyle, endpoint) => {
    const credentials = { ...EXAMPLE, sessionToken: 'session/token+with=odd chars' };
    const now = new Date('2026-01-02T03:04:05Z');
    const url = s3ObjectUrl({ bucket: 'images', region: 'eu-west-1', endpoint, forcePathStyle }, key);
    const ours = new URL(presignS3Get(url, { region: 'eu-west-1', credentials, expiresInSeconds: 300, now }));
    const signer = new SignatureV4({ credentials, region: 'eu-west-1', service: 's3', sha256: Sha256, uriEscapePath: false, applyChecksum: false });
    const theirs = await signer.presign(
      // As the SDK's S3 presigner asks: the payload is not signed (its header names the hash, it is not sent).
      { method: 'GET', protocol: url.protocol, hostname: url.hostname, port: url.port === '' ? undefined : Number(url.port), path: url.pathname, query: {}, headers: { host: url.host, 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } },
      { expiresIn: 300, signingDate: now, unsignableHeaders: new Set(['x-amz-content-sha256']), unhoistableHeaders: new Set(['x-amz-content-sha256']) },
    );
    expect(ours.pathname).toBe(theirs.path);
    expect(ours.searchParams.get('X-Amz-Signature')).toBe(theirs.query?.['X-Amz-Signature']);
  });

  it('refuses a lifetime outside 1 s..7 days', () => {
    const url = s3ObjectUrl({ bucket: 'b', region: 'us-east-1', forcePathStyle: false }, 'k');
    expect(() => presignS3Get(url, { region: 'us-east-1', credentials: EXAMPLE, expiresInSeconds: 0, now: new Date() })).toThrow(RangeError);
    expect(() => presignS3Get(url, { region: 'us-east-1', credentials: EXAMPLE, expiresInSeconds: 604801, now: new Date() })).toThrow(RangeError);
  });
});

describe('S3ObjectStore.presignGet against an S3-compatible server', () => {
  let s3: TestS3Server;
  let store: S3ObjectStore;
  beforeAll(async () => {
    s3 = await startS3Server({ buckets: ['images'] });
    store = new S3ObjectStore({ bucket: 'images', endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials });
  });
  afterAll(async () => {
    store?.destroy();
    await s3?.close();
  });

  it('gives a URL that fetches the object without credentials', async () => {
    const bytes = new Uint8Array([82, 73, 70, 70, 1, 2, 3, 4]);
    await firstValueFrom(store.put('generated/j/0/1-1.webp', bytes, 'image/webp'), { defaultValue: undefined });
    const url = await firstValueFrom(store.presignGet('generated/j/0/1-1.webp', { expiresInSeconds: 60 }));
    expect(url.startsWith(`${s3.endpoint}/images/generated/j/0/1-1.webp?`)).toBe(true);
    const response = await fetch(url);
    expect(response.status).toBe(200);
    expect(new Uint8Array(await response.arrayBuffer())).toEqual(bytes);
  });
});
