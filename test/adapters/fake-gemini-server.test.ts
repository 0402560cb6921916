import { request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { toWebp } from '../../src/sinks/image-codec.js';
import { randomMixBehavior, startFakeGeminiServer, type FakeGeminiServer } from '../../src/testing/fake-gemini-server.js';
import { MAX_STAMP, readStamp, renderStampedPng } from '../../src/testing/stamped-image.js';

const open: FakeGeminiServer[] = [];
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

async function start(options: Parameters<typeof startFakeGeminiServer>[0] = {}): Promise<FakeGeminiServer> {
  const server = await startFakeGeminiServer(options);
  open.push(server);
  return server;
}

/** A raw POST (no SDK), so the server's protocol is tested on its own. `json` is `any`: it is whatever JSON the fake sent, probed field by field. */
function post(server: FakeGeminiServer, path: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        // Test helper: the body is whatever JSON the fake sent.
        resolve({ status: res.statusCode ?? 0, headers: res.headers, json: text ? JSON.parse(text) : undefined });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

const PATH = '/v1beta/models/gemini-2.5-flash-image:generateContent';
const BODY = { contents: [{ role: 'user', parts: [{ text: 'hi' }] }], generationConfig: { responseModalities: ['IMAGE'], imageConfig: { aspectRatio: '1:1' } } };

describe('stamped images', () => {
  it.each([0, 1, 7, 255, 4096, 123_456, MAX_STAMP])('stamp %i survives PNG and WebP conversion', async (stamp) => {
    const png = await renderStampedPng({ stamp, width: 36, height: 64 });
    expect(await readStamp(png)).toBe(stamp);
    expect(await readStamp((await toWebp(png, { quality: 50 })).bytes)).toBe(stamp);
  });

  it('rejects stamps it cannot encode', async () => {
    await expect(renderStampedPng({ stamp: MAX_STAMP + 1, width: 64, height: 64 })).rejects.toThrow(RangeError);
  });
});

describe('fake Gemini server', () => {
  it('checks the API key: missing -> 401, wrong -> 403', async () => {
    const server = await start({ apiKey: 'k1' });
    expect((await post(server, PATH, BODY)).status).toBe(401);
    expect((await post(server, PATH, BODY, { 'x-goog-api-key': 'nope' })).status).toBe(403);
    expect((await post(server, PATH, BODY, { 'x-goog-api-key': 'k1' })).status).toBe(200);
    expect(server.requests.map((r) => r.apiKeyOk)).toEqual([false, false, true]);
  });

  it('answers 404 for other paths without counting a call', async () => {
    const server = await start();
    expect((await post(server, '/v1beta/models/x:countTokens', BODY, { 'x-goog-api-key': server.apiKey })).status).toBe(404);
    expect(server.calls()).toBe(0);
  });

  it('429 carries RetryInfo and Retry-After', async () => {
    const server = await start({ behavior: () => 'status:429' });
    const res = await post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey });
    expect(res.status).toBe(429);
    expect(res.headers['retry-after']).toBe('2');
    expect(res.json.error.details).toEqual([{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '2s' }]);
  });

  it('serves images stamped with the call number and records it', async () => {
    const server = await start();
    for (let i = 0; i < 3; i++) {
      const res = await post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey });
      const data = res.json.candidates[0].content.parts[0].inlineData.data as string;
      expect(await readStamp(Buffer.from(data, 'base64'))).toBe(i + 1);
    }
    expect(server.requests.map((r) => r.servedStamp)).toEqual([1, 2, 3]);
  });

  it('above maxInFlight answers 429 and tracks the in-flight peak', async () => {
    const server = await start({ maxInFlight: 2, latencyMs: 150 });
    const results = await Promise.all(Array.from({ length: 5 }, () => post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey })));
    const statuses = results.map((r) => r.status).sort();
    expect(statuses).toEqual([200, 200, 429, 429, 429]);
    expect(server.maxObservedInFlight()).toBe(5);
    expect(server.inFlight()).toBe(0);
  });

  it('close() ends hanging calls and destroys their sockets', async () => {
    const server = await startFakeGeminiServer({ behavior: () => 'hang' });
    const pending = post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey }).then(
      () => 'answered',
      () => 'socket closed',
    );
    while (server.calls() === 0) await new Promise((r) => setTimeout(r, 5));
    await server.close();
    expect(await pending).toBe('socket closed');
    expect(server.requests[0]?.outcome).toBe('closed_by_server');
  });

  it('randomMixBehavior is a pure function of (seed, call number) with about failureRate failures', () => {
    const mix = randomMixBehavior({ seed: 1, failureRate: 0.25, classes: ['status:503', 'text_only'] });
    const again = randomMixBehavior({ seed: 1, failureRate: 0.25, classes: ['status:503', 'text_only'] });
    const calls = Array.from({ length: 400 }, (_, i) => ({ n: i + 1, body: {}, inFlight: 1 }));
    const picked = calls.map(mix);
    expect(calls.map(again)).toEqual(picked);
    const failures = picked.filter((b) => b !== 'image');
    expect(failures.length).toBeGreaterThan(60);
    expect(failures.length).toBeLessThan(140);
    expect(new Set(failures)).toEqual(new Set(['status:503', 'text_only']));
    const otherSeed = randomMixBehavior({ seed: 2, failureRate: 0.25, classes: ['status:503', 'text_only'] });
    expect(calls.map(otherSeed)).not.toEqual(picked);
  });
});

describe('fake Gemini server latency', () => {
  it('latencyMs may be a function of the call', async () => {
    const server = await start({ latencyMs: ({ n }) => (n === 1 ? 200 : 0) });
    const t0 = Date.now();
    await post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey });
    const first = Date.now() - t0;
    const t1 = Date.now();
    await post(server, PATH, BODY, { 'x-goog-api-key': server.apiKey });
    const second = Date.now() - t1;
    expect(first).toBeGreaterThanOrEqual(190);
    expect(second).toBeLessThan(150);
  });
});
