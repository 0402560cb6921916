/**
 * The Gemini adapter in a thread of its own (`ThreadedImageGenerator`), against the fake
 * Gemini server: the same requests, images and classified failures as in the calling
 * thread (`gemini-image-generator.test.ts`), across the thread. The thread's script is
 * compiled JavaScript, so it comes from the harness's build of the current `src/`
 * (`cliEntry`); the main side is the source under test.
 */
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import sharp from 'sharp';
import { firstValueFrom, type Observable } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import type { GeneratedImage, GenerationRequest, InputImage } from '../../src/domain/ports.js';
import { generatorThreadEntry, ThreadedImageGenerator } from '../../src/adapters/threaded-image-generator.js';
import { cliEntry } from '../support/cli-entry.js';
import { startFakeGeminiServer, type FakeBehavior, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { readStamp } from '../support/stamped-image.js';

const API_KEY = 'fake-key-THREAD-DO-NOT-LEAK-77';
let server: FakeGeminiServer;
let entry: URL;
let input: InputImage;
const generators: ThreadedImageGenerator[] = [];

beforeAll(async () => {
  server = await startFakeGeminiServer({ apiKey: API_KEY });
  entry = pathToFileURL(join(dirname(await cliEntry()), 'adapters', 'generator-thread.js'));
  input = { bytes: new Uint8Array(await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 9, g: 90, b: 200 } } }).jpeg().toBuffer()), mimeType: 'image/jpeg' };
}, 120_000);
afterAll(async () => {
  await Promise.all(generators.map((g) => g.close()));
  await server.close();
});
afterEach(() => server.setBehavior(() => 'image'));

function generator(overrides: { timeoutMs?: number; apiKey?: string; entry?: URL } = {}): ThreadedImageGenerator {
  const g = new ThreadedImageGenerator({ gemini: { apiKey: overrides.apiKey ?? API_KEY, baseUrl: server.url, timeoutMs: overrides.timeoutMs ?? 10_000 }, entry: overrides.entry ?? entry });
  generators.push(g);
  return g;
}

function request(overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return { jobId: 'job-t', stageIndex: 0, slotIndex: 0, attempt: 1, prompt: 'a harbour at night', aspectRatio: '1:1', inputAttachId: 'attach-t', input, ...overrides };
}

async function failure(source: Observable<GeneratedImage>): Promise<PipelineError> {
  const error = await firstValueFrom(source).then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PipelineError);
  expect((error as PipelineError).message).not.toContain(API_KEY);
  return error as PipelineError;
}

function only(behavior: FakeBehavior): void {
  server.setBehavior(() => behavior);
}

describe('ThreadedImageGenerator: the Gemini adapter in a thread of its own', () => {
  it('sends the request and the input image; emits the served image with its usage', async () => {
    const g = generator();
    const image = await firstValueFrom(g.generate(request()));
    const record = server.requests.at(-1);
    expect(record).toMatchObject({ apiKeyOk: true, prompt: 'a harbour at night', aspectRatio: '1:1', inputImages: [{ mimeType: 'image/jpeg', byteSize: input.bytes.byteLength }] });
    expect(image.bytes).toBeInstanceOf(Uint8Array);
    expect(image.mimeType).toBe('image/png');
    expect(await readStamp(image.bytes)).toBe(record?.servedStamp);
    expect(image.usage).toMatchObject({ imageCount: 1 });
    expect(g.model).toBe('gemini-2.5-flash-image');
  });

  it('a stage input shared by many calls, and calls without one, each reach the server as asked', async () => {
    const g = generator();
    const other: InputImage = { bytes: new Uint8Array(await sharp({ create: { width: 8, height: 8, channels: 3, background: '#fff' } }).png().toBuffer()), mimeType: 'image/png' };
    const before = server.requests.length;
    const images = await Promise.all([
      firstValueFrom(g.generate(request({ slotIndex: 0 }))),
      firstValueFrom(g.generate(request({ slotIndex: 1 }))),
      firstValueFrom(g.generate(request({ slotIndex: 2, input: other, prompt: 'second stage' }))),
      firstValueFrom(g.generate(request({ slotIndex: 3, input: null, prompt: 'no input' }))),
      firstValueFrom(g.generate(request({ slotIndex: 4 }))),
    ]);
    expect(images).toHaveLength(5);
    const seen = server.requests.slice(before).map((r) => [r.prompt, r.inputImages.map((i) => `${i.mimeType} ${i.byteSize}`).join()]);
    expect(seen.sort()).toEqual(
      [
        ['a harbour at night', `image/jpeg ${input.bytes.byteLength}`],
        ['a harbour at night', `image/jpeg ${input.bytes.byteLength}`],
        ['a harbour at night', `image/jpeg ${input.bytes.byteLength}`],
        ['no input', ''],
        ['second stage', `image/png ${other.bytes.byteLength}`],
      ].sort(),
    );
  });

  it('failures cross the thread classified, with retry hints, HTTP status and usage', async () => {
    const g = generator();
    only({ status: 429, retryDelay: '1.5s', retryAfter: '9' });
    expect(await failure(g.generate(request()))).toMatchObject({ errorClass: 'rate_limited', retryAfterMs: 1500, httpStatus: 429, retryable: true });
    only('status:503');
    expect(await failure(g.generate(request()))).toMatchObject({ httpStatus: 503, retryable: true });
    only('finish:IMAGE_SAFETY');
    const blocked = await failure(g.generate(request()));
    expect(blocked.errorClass).toBe('safety_blocked');
    expect(blocked.usage).toMatchObject({ imageCount: 0 });
    only('corrupt');
    expect((await failure(g.generate(request()))).errorClass).toBe('corrupt_image');
    only('image');
    expect(await failure(generator({ apiKey: 'wrong-key' }).generate(request()))).toMatchObject({ errorClass: 'auth', httpStatus: 403, retryable: false });
  });

  it('times out in the thread, and the server sees the connection close', async () => {
    only('hang');
    const error = await failure(generator({ timeoutMs: 300 }).generate(request()));
    expect(error.errorClass).toBe('timeout');
    const n = server.requests.at(-1)?.n ?? -1;
    expect((await server.settled(n)).outcome).toBe('client_closed');
  }, 10_000);

  it('is cold, and unsubscribing aborts the call in the thread: nothing is emitted', async () => {
    only('hang');
    const g = generator();
    const before = server.calls();
    const call = g.generate(request());
    await new Promise((r) => setTimeout(r, 100));
    expect(server.calls()).toBe(before);
    const events: string[] = [];
    const subscription = call.subscribe({ next: () => events.push('next'), error: () => events.push('error'), complete: () => events.push('complete') });
    while (server.calls() === before) await new Promise((r) => setTimeout(r, 10));
    const n = server.requests.at(-1)?.n ?? -1;
    subscription.unsubscribe();
    expect((await server.settled(n)).outcome).toBe('client_closed');
    await new Promise((r) => setTimeout(r, 50));
    expect(events).toEqual([]);
  }, 10_000);

  it('a thread that dies fails its calls in flight as network; the next call starts a new thread', async () => {
    // A thread that ends at its first call.
    const dying = new URL(
      'data:text/javascript,' +
        encodeURIComponent(`import { parentPort } from 'node:worker_threads'; parentPort.on('message', (m) => { if (m.op === 'generate') process.exit(7); });`),
    );
    const g = generator({ entry: dying });
    const first = await failure(g.generate(request()));
    expect(first).toMatchObject({ errorClass: 'network', retryable: true });
    expect(first.message).toContain('exit code 7');
    // A new thread for the next call (it dies the same way: the same script).
    expect((await failure(g.generate(request()))).message).toContain('exit code 7');
  });

  it('closed: later calls fail cancelled and nothing is sent', async () => {
    const g = generator();
    await firstValueFrom(g.generate(request()));
    await g.close();
    const before = server.calls();
    expect((await failure(g.generate(request()))).errorClass).toBe('cancelled');
    expect(server.calls()).toBe(before);
  });

  it('never prints its key', () => {
    const g = generator();
    for (const printed of [JSON.stringify(g), inspect(g), String(Object.keys(g))]) expect(printed).not.toContain(API_KEY);
    expect(JSON.parse(JSON.stringify(g))).toMatchObject({ model: 'gemini-2.5-flash-image', thread: true });
  });

  it('refuses a missing script, naming it; from TypeScript sources there is none beside the module', () => {
    expect(generatorThreadEntry()).toBeUndefined();
    expect(() => new ThreadedImageGenerator({ gemini: { apiKey: 'k' }, entry: new URL('file:///nowhere/generator-thread.js') })).toThrow(/nowhere\/generator-thread\.js does not exist/);
    expect(() => new ThreadedImageGenerator({ gemini: {}, entry })).toThrow(/apiKey/);
  });
});
