/**
 * The Gemini adapter in a thread of its own (`ThreadedImageGenerator`), against the fake
 * Gemini server: the same requests, images and classified failures as in the calling
 * thread (`gemini-image-generator.test.ts`), across the thread. The thread's script is
 * compiled JavaScript, so it comes from the harness's build of the current `src/`
 * (`cliEntry`); the main side is the source under test.
 */
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import sharp from 'sharp';
import { firstValueFrom, type Observable } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import type { GeneratedImage, GenerationRequest, InputImage } from '../../src/domain/ports.js';
import { ThreadedImageGenerator } from '../../src/adapters/threaded-image-generator.js';
import { ImageThread, imageThreadEntry } from '../../src/adapters/image-thread-link.js';
import { ThreadedWebpCodec } from '../../src/adapters/threaded-webp-codec.js';
import { cliEntry } from '../support/cli-entry.js';
import { startFakeGeminiServer, type FakeBehavior, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { readStamp } from '../support/stamped-image.js';
import { failureOf } from '../support/failure-of.js';
import { toWebp } from '../../src/adapters/image-codec.js';
import { FolderObjectStore, SYNC_PUT_MAX_BYTES } from '../../src/sinks/folder-object-store.js';

const API_KEY = 'fake-key-THREAD-DO-NOT-LEAK-77';
let server: FakeGeminiServer;
let entry: URL;
let input: InputImage;
const generators: ThreadedImageGenerator[] = [];

beforeAll(async () => {
  server = await startFakeGeminiServer({ apiKey: API_KEY });
  entry = pathToFileURL(join(dirname(await cliEntry()), 'adapters', 'image-thread.js'));
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

/** The call's failure; never the key in its message. */
function failure(source: Observable<GeneratedImage>): Promise<PipelineError> {
  return failureOf(source, [API_KEY]);
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

  it('a call in flight when the thread is closed fails cancelled; it is not left waiting for an answer that cannot come', async () => {
    only('hang');
    const g = generator();
    const before = server.calls();
    const call = failure(g.generate(request()));
    while (server.calls() === before) await new Promise((r) => setTimeout(r, 10));
    await g.close();
    const error = await Promise.race([call, new Promise<'still waiting'>((r) => setTimeout(() => r('still waiting'), 2_000))]);
    expect(error).toMatchObject({ errorClass: 'cancelled' });
  }, 10_000);

  it('never prints its key', () => {
    const g = generator();
    for (const printed of [JSON.stringify(g), inspect(g), String(Object.keys(g))]) expect(printed).not.toContain(API_KEY);
    expect(JSON.parse(JSON.stringify(g))).toMatchObject({ model: 'gemini-2.5-flash-image', thread: true });
  });

  it('refuses a missing script, naming it; from TypeScript sources there is none beside the module', () => {
    expect(imageThreadEntry()).toBeUndefined();
    expect(() => new ThreadedImageGenerator({ gemini: { apiKey: 'k' }, entry: new URL('file:///nowhere/image-thread.js') })).toThrow(/nowhere\/image-thread\.js does not exist/);
    expect(() => new ThreadedImageGenerator({ gemini: {}, entry })).toThrow(/apiKey/);
    expect(() => new ThreadedImageGenerator({ thread: new ImageThread({ entry }) })).toThrow(/without a provider/);
  });
});

describe('ThreadedWebpCodec: the WebP conversion in the image thread', () => {
  it('converts as toWebp does; the caller keeps its bytes', async () => {
    const thread = new ImageThread({ entry });
    try {
      const codec = new ThreadedWebpCodec(thread);
      const png = new Uint8Array(await sharp({ create: { width: 64, height: 48, channels: 3, background: '#3a6' } }).png().toBuffer());
      const before = png.byteLength;
      const [threaded, local] = await Promise.all([codec.toWebp(png, { quality: 70 }), toWebp(png, { quality: 70 })]);
      expect(png.byteLength).toBe(before);
      expect({ ...threaded, bytes: undefined }).toEqual({ ...local, bytes: undefined });
      expect(Buffer.from(threaded.bytes).equals(Buffer.from(local.bytes))).toBe(true);
      expect((await sharp(threaded.bytes).metadata()).format).toBe('webp');
    } finally {
      await thread.close();
    }
  });

  it('bytes that are not an image fail corrupt_image, with the same message; a closed thread fails cancelled', async () => {
    const thread = new ImageThread({ entry });
    const codec = new ThreadedWebpCodec(thread);
    const junk = new Uint8Array(300).fill(7);
    const [threaded, local] = await Promise.all([codec.toWebp(junk).catch((e: unknown) => e), toWebp(junk).catch((e: unknown) => e)]);
    expect(threaded).toBeInstanceOf(PipelineError);
    expect(threaded).toMatchObject({ errorClass: 'corrupt_image', message: (local as PipelineError).message });
    await thread.close();
    await expect(codec.toWebp(junk)).rejects.toMatchObject({ errorClass: 'cancelled' });
  });

  it('one thread serves the generator and the codec', async () => {
    const thread = new ImageThread({ gemini: { apiKey: API_KEY, baseUrl: server.url, timeoutMs: 10_000 }, entry });
    try {
      const g = new ThreadedImageGenerator({ thread });
      const codec = new ThreadedWebpCodec(thread);
      const image = await firstValueFrom(g.generate(request()));
      const webp = await codec.toWebp(image.bytes);
      expect(webp.contentType).toBe('image/webp');
      expect(thread.generation).toBe(1);
      // The generator does not close a thread it shares.
      await g.close();
      expect((await codec.toWebp(image.bytes)).contentType).toBe('image/webp');
    } finally {
      await thread.close();
    }
  });
});

describe('FolderObjectStore writing through the image thread', () => {
  it('writes the object whole, atomically, its folder made; errors keep their code and name the key; larger objects stay in this thread', async () => {
    const root = await mkdtemp(join(tmpdir(), 'thread-store-'));
    const thread = new ImageThread({ entry });
    try {
      const store = new FolderObjectStore({ root, writer: thread });
      await firstValueFrom(store.put('a/b/c.webp', new Uint8Array([1, 2, 3]), 'image/webp'));
      await firstValueFrom(store.put('a/b/c.webp', new Uint8Array([4, 5]), 'image/webp'));
      expect(await firstValueFrom(store.get('a/b/c.webp'))).toEqual(new Uint8Array([4, 5]));
      expect(await readdir(join(root, 'a/b'))).toEqual(['c.webp']);
      // A folder removed after a write is made again.
      await rm(join(root, 'a'), { recursive: true });
      await firstValueFrom(store.put('a/b/d.webp', new Uint8Array([6]), 'image/webp'));
      expect(await readdir(join(root, 'a/b'))).toEqual(['d.webp']);
      // 'a/b/d.webp' is a file: it cannot be a folder.
      const error = await firstValueFrom(store.put('a/b/d.webp/e.webp', new Uint8Array([7]), 'image/webp')).catch((e: unknown) => e);
      expect(error).toMatchObject({ errorClass: 'storage' });
      expect((error as Error).message).toMatch(/a\/b\/d\.webp\/e\.webp failed \(E[A-Z]+\): /);
      expect((error as Error).message).not.toContain(root);
      expect(thread.generation).toBe(1);
      await thread.close();
      // Closed: a small write fails as storage, saying so; a large one is written in this thread.
      expect(await firstValueFrom(store.put('a/x.webp', new Uint8Array([1]), 'image/webp')).catch((e: unknown) => e)).toMatchObject({ errorClass: 'storage' });
      await firstValueFrom(store.put('a/big.bin', new Uint8Array(SYNC_PUT_MAX_BYTES + 1), 'application/octet-stream'));
      expect((await firstValueFrom(store.get('a/big.bin'))).byteLength).toBe(SYNC_PUT_MAX_BYTES + 1);
    } finally {
      await thread.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});

describe('FolderObjectStore converting and writing in the image thread (putWebp)', () => {
  it('stores the bytes toWebp makes, answering their facts; the caller keeps its image; a store without a converting writer has none', async () => {
    const root = await mkdtemp(join(tmpdir(), 'thread-webp-'));
    const thread = new ImageThread({ entry });
    try {
      const store = new FolderObjectStore({ root, writer: thread });
      expect(new FolderObjectStore({ root }).putWebp).toBeUndefined();
      const png = new Uint8Array(await sharp({ create: { width: 96, height: 54, channels: 3, background: '#c83' } }).png().toBuffer());
      const before = png.byteLength;
      const stored = await firstValueFrom(store.putWebp!('generated/j/0/3-1.webp', png, { quality: 72 }));
      const local = await toWebp(png, { quality: 72 });
      expect(png.byteLength).toBe(before);
      expect(stored).toEqual({ contentType: 'image/webp', width: 96, height: 54, byteSize: local.byteSize });
      expect(Buffer.from(await firstValueFrom(store.get('generated/j/0/3-1.webp'))).equals(Buffer.from(local.bytes))).toBe(true);
      expect(await readdir(join(root, 'generated/j/0'))).toEqual(['3-1.webp']);
    } finally {
      await thread.close();
      await rm(root, { recursive: true, force: true });
    }
  });

  it('bytes that are not an image fail corrupt_image and write nothing; a file error is storage, naming the key with its code; a closed thread, storage', async () => {
    const root = await mkdtemp(join(tmpdir(), 'thread-webp-'));
    const thread = new ImageThread({ entry });
    try {
      const store = new FolderObjectStore({ root, writer: thread });
      const junk = new Uint8Array(300).fill(7);
      const corrupt = await firstValueFrom(store.putWebp!('g/x.webp', junk, { quality: 80 })).catch((e: unknown) => e);
      expect(corrupt).toBeInstanceOf(PipelineError);
      expect(corrupt).toMatchObject({ errorClass: 'corrupt_image', message: ((await toWebp(junk).catch((e: unknown) => e)) as PipelineError).message });
      expect(await readdir(root)).toEqual([]);
      const png = new Uint8Array(await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } }).png().toBuffer());
      await firstValueFrom(store.put('g/file', new Uint8Array([1]), 'application/octet-stream'));
      const unwritable = await firstValueFrom(store.putWebp!('g/file/x.webp', png, { quality: 80 })).catch((e: unknown) => e);
      expect(unwritable).toMatchObject({ errorClass: 'storage' });
      expect((unwritable as Error).message).toMatch(/folder store put g\/file\/x\.webp failed \(E[A-Z]+\): /);
      expect((unwritable as Error).message).not.toContain(root);
      await thread.close();
      expect(await firstValueFrom(store.putWebp!('g/y.webp', png, { quality: 80 })).catch((e: unknown) => e)).toMatchObject({ errorClass: 'storage' });
    } finally {
      await thread.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
