import { request as httpRequest } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { toWebp } from '../../src/adapters/image-codec.js';
import { randomMixBehavior, startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { MAX_STAMP, readStamp, renderStampedPng } from '../support/stamped-image.js';

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
function post(
  server: FakeGeminiServer,
  path: string,
  body: unknown,
  headers: Record<string, string> = {},
  signal?: AbortSignal,
): Promise<{ status: number; headers: Record<string, unknown>; json: any }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${server.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, ...(signal ? { signal } : {}) }, (res) => {
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
    // The first two calls are held by the server until the test releases them: they are
    // surely in flight while the next three arrive (no reliance on a latency window).
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const server = await start({ maxInFlight: 2, hold: ({ n }) => (n <= 2 ? released : undefined) });
    const key = { 'x-goog-api-key': server.apiKey };
    const held = [post(server, PATH, BODY, key), post(server, PATH, BODY, key)];
    await Promise.all([server.received(1), server.received(2)]);
    expect(server.inFlight()).toBe(2);
    // Three more, together: each finds at least 2 in flight, so each is over the limit.
    const over = await Promise.all(Array.from({ length: 3 }, () => post(server, PATH, BODY, key)));
    expect(over.map((r) => r.status)).toEqual([429, 429, 429]);
    expect(over[0]?.json.error.details).toEqual([{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay: '1s' }]);
    expect(server.maxObservedInFlight()).toBeGreaterThanOrEqual(3);
    expect(server.maxObservedInFlight()).toBeLessThanOrEqual(5);
    release();
    expect((await Promise.all(held)).map((r) => r.status)).toEqual([200, 200]);
    await Promise.all([1, 2, 3, 4, 5].map((n) => server.settled(n)));
    expect(server.inFlight()).toBe(0);
    // Back under the limit: answered again.
    expect((await post(server, PATH, BODY, key)).status).toBe(200);
    expect(server.requests.map((r) => r.behavior)).toEqual(['image', 'image', 'status:429', 'status:429', 'status:429', 'image']);
  });

  it('refuses above maxInFlight at the door: the 429 comes while the served call is still running, and the refused call leaves the count', async () => {
    // The served call is held until the test releases it; a refusal that waited for its
    // latency or its hold (as it once did) would not be back before the release.
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const server = await start({ maxInFlight: 1, latencyMs: 50, hold: () => released });
    const key = { 'x-goog-api-key': server.apiKey };
    const served = post(server, PATH, BODY, key);
    await server.received(1);
    const refused = await post(server, PATH, BODY, key);
    expect(refused.status).toBe(429);
    expect(server.requests[0]?.outcome).toBe('pending');
    expect(server.inFlight(), 'only the served call counts once the refusal is answered').toBe(1);
    expect(server.maxObservedInFlight(), 'the refused arrival counts in the peak').toBe(2);
    release();
    expect((await served).status).toBe(200);
  });

  it('tracks the in-flight peak exactly: calls held together count together', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const server = await start({ hold: () => released });
    const key = { 'x-goog-api-key': server.apiKey };
    const calls = Array.from({ length: 5 }, () => post(server, PATH, BODY, key));
    await Promise.all([1, 2, 3, 4, 5].map((n) => server.received(n)));
    expect(server.inFlight()).toBe(5);
    release();
    expect((await Promise.all(calls)).map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    await Promise.all([1, 2, 3, 4, 5].map((n) => server.settled(n)));
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
    // Call 1 waits an hour, call 2 not at all: call 2 is answered while call 1 is still
    // pending. An order of events, not a measured duration.
    const seen: number[] = [];
    const server = await start({
      latencyMs: (call) => {
        seen.push(call.n);
        return call.n === 1 ? 3_600_000 : 0;
      },
    });
    const key = { 'x-goog-api-key': server.apiKey };
    const abort = new AbortController();
    const first = post(server, PATH, BODY, key, abort.signal).then(
      (r) => `answered ${r.status}`,
      () => 'aborted',
    );
    await server.received(1);
    const second = await post(server, PATH, BODY, key);
    expect(second.status).toBe(200);
    expect(server.requests[1]?.outcome).toBe('answered');
    expect(server.requests[0]?.outcome).toBe('pending');
    expect(seen).toEqual([1, 2]);
    abort.abort();
    expect(await first).toBe('aborted');
    expect((await server.settled(1)).outcome).toBe('client_closed');
  });

  it('a held call is answered only once the gate opens', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const server = await start({ hold: ({ n }) => (n === 1 ? released : undefined) });
    const key = { 'x-goog-api-key': server.apiKey };
    const first = post(server, PATH, BODY, key);
    await server.received(1);
    expect((await post(server, PATH, BODY, key)).status).toBe(200);
    expect(server.requests[0]?.outcome).toBe('pending');
    server.setHold(undefined);
    release();
    expect((await first).status).toBe(200);
    expect((await server.settled(1)).outcome).toBe('answered');
  });
});
