import sharp from 'sharp';
import { catchError, firstValueFrom, of, type Observable } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import type { GeneratedImage, GenerationRequest } from '../../src/domain/ports.js';
import { GeminiImageGenerator, type GeminiModelsClient } from '../../src/adapters/gemini-image-generator.js';
import { FAKE_USAGE, startFakeGeminiServer, THOUGHT_STAMP, type FakeBehavior, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { readStamp } from '../support/stamped-image.js';
import { failureOf } from '../support/failure-of.js';

const API_KEY = 'fake-key-DO-NOT-LEAK-4242';
let server: FakeGeminiServer;
let inputJpeg: Uint8Array;

beforeAll(async () => {
  server = await startFakeGeminiServer({ apiKey: API_KEY });
  const jpeg = await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 200, g: 40, b: 90 } } }).jpeg().toBuffer();
  inputJpeg = new Uint8Array(jpeg);
});
afterAll(() => server.close());
afterEach(() => server.setBehavior(() => 'image'));

function request(overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    jobId: 'job-1',
    stageIndex: 0,
    slotIndex: 0,
    attempt: 1,
    prompt: 'a lighthouse at dusk',
    aspectRatio: '16:9',
    inputAttachId: 'attach-1',
    input: { bytes: inputJpeg, mimeType: 'image/jpeg' },
    ...overrides,
  };
}

function generator(overrides: { timeoutMs?: number; apiKey?: string } = {}): GeminiImageGenerator {
  return new GeminiImageGenerator({ apiKey: overrides.apiKey ?? API_KEY, baseUrl: server.url, timeoutMs: overrides.timeoutMs ?? 10_000 });
}

/** The call's failure; never the key or image bytes in its message. */
function failure(source: Observable<GeneratedImage>): Promise<PipelineError> {
  return failureOf(source, [API_KEY, Buffer.from(inputJpeg).toString('base64').slice(0, 40)]);
}

/** Makes every following call (until afterEach resets it) behave as `behavior`. */
function only(behavior: FakeBehavior): void {
  server.setBehavior(() => behavior);
}

describe('GeminiImageGenerator through @google/genai against the fake server', () => {
  it('sends prompt, input image (real mime type), IMAGE modality and aspect ratio; emits the image with usage', async () => {
    const before = server.calls();
    const image = await firstValueFrom(generator().generate(request()));
    const record = server.requests.at(-1);
    expect(server.calls()).toBe(before + 1);
    expect(record).toMatchObject({
      model: 'gemini-2.5-flash-image',
      apiKeyOk: true,
      prompt: 'a lighthouse at dusk',
      aspectRatio: '16:9',
      responseModalities: ['IMAGE'],
      inputImages: [{ mimeType: 'image/jpeg', byteSize: inputJpeg.byteLength }],
      behavior: 'image',
    });
    expect(image.mimeType).toBe('image/png');
    expect(await readStamp(image.bytes)).toBe(record?.servedStamp);
    const meta = await sharp(image.bytes).metadata();
    expect((meta.width ?? 0) / (meta.height ?? 1)).toBeCloseTo(16 / 9, 1);
    expect(image.usage).toEqual({
      promptTokens: FAKE_USAGE.promptTokenCount,
      outputTokens: FAKE_USAGE.candidatesTokenCount,
      totalTokens: FAKE_USAGE.totalTokenCount,
      imageCount: 1,
    });
  });

  it('records thought tokens, and a failed answer (a safety block) carries its usage with its error', async () => {
    const usage = { promptTokenCount: 20, candidatesTokenCount: 1290, totalTokenCount: 1410, thoughtsTokenCount: 100 };
    const local = await startFakeGeminiServer({ apiKey: 'k2', behavior: ({ n }) => (n === 1 ? 'image' : 'finish:IMAGE_SAFETY'), usageMetadata: () => usage });
    try {
      const gen = new GeminiImageGenerator({ apiKey: 'k2', baseUrl: local.url, timeoutMs: 5000 });
      const image = await firstValueFrom(gen.generate(request()));
      expect(image.usage).toEqual({ promptTokens: 20, outputTokens: 1290, totalTokens: 1410, thoughtsTokens: 100, imageCount: 1 });
      const error = await firstValueFrom(gen.generate(request())).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PipelineError);
      expect((error as PipelineError).errorClass).toBe('safety_blocked');
      expect((error as PipelineError).usage).toEqual({ promptTokens: 20, outputTokens: 1290, totalTokens: 1410, thoughtsTokens: 100, imageCount: 0 });
    } finally {
      await local.close();
    }
  });

  it('without an input image sends the prompt only', async () => {
    await firstValueFrom(generator().generate(request({ input: null, inputAttachId: null })));
    expect(server.requests.at(-1)?.inputImages).toEqual([]);
  });

  it('is cold: nothing is sent until subscription', async () => {
    const before = server.calls();
    const call = generator().generate(request({ prompt: 'the cold call' }));
    // A whole request/answer round trip made after the cold call was created: had creating it sent
    // anything, that request would have reached the server first.
    await firstValueFrom(generator().generate(request({ prompt: 'a marker call' })));
    expect(server.requests.slice(before).map((r) => r.prompt)).toEqual(['a marker call']);
    await firstValueFrom(call);
    expect(server.requests.slice(before).map((r) => r.prompt)).toEqual(['a marker call', 'the cold call']);
  });

  it('every call serves a different image (stamps differ)', async () => {
    const g = generator();
    const a = await firstValueFrom(g.generate(request()));
    const b = await firstValueFrom(g.generate(request()));
    expect(await readStamp(a.bytes)).not.toBe(await readStamp(b.bytes));
  });

  it('takes the final image, not the thought image', async () => {
    only('thought_image');
    const image = await firstValueFrom(generator().generate(request()));
    const stamp = await readStamp(image.bytes);
    expect(stamp).not.toBe(THOUGHT_STAMP);
    expect(stamp).toBe(server.requests.at(-1)?.servedStamp);
  });

  it.each([
    ['text_only', 'no_image'],
    ['no_parts', 'no_image'],
    ['no_candidates', 'no_image'],
    ['finish:NO_IMAGE', 'no_image'],
    ['finish:IMAGE_OTHER', 'no_image'],
    ['finish:OTHER', 'no_image'],
    ['finish:IMAGE_SAFETY', 'safety_blocked'],
    ['finish:IMAGE_PROHIBITED_CONTENT', 'prompt_blocked'],
    ['finish:IMAGE_RECITATION', 'safety_blocked'],
    ['finish:SAFETY', 'safety_blocked'],
    ['finish:PROHIBITED_CONTENT', 'prompt_blocked'],
    ['finish:RECITATION', 'safety_blocked'],
    ['prompt_blocked', 'prompt_blocked'],
    ['corrupt', 'corrupt_image'],
    ['status:500', 'overloaded'],
    ['status:503', 'overloaded'],
    ['status:504', 'timeout'],
    ['status:400', 'invalid_request'],
    ['status:401', 'auth'],
    ['status:403', 'auth'],
    ['drop', 'network'],
    ['drop_before_headers', 'network'],
  ] as [FakeBehavior, string][])('%s -> %s', async (behavior, expected) => {
    only(behavior);
    const error = await failure(generator().generate(request()));
    expect(error.errorClass).toBe(expected);
  });

  it('HTTP errors carry httpStatus and the SDK does not retry them', async () => {
    const before = server.calls();
    // Only the first call fails; any later one is answered with an image, so a retry inside the SDK
    // would turn this failure into a success (and `failure` would throw).
    server.setBehavior(({ n }) => (n === before + 1 ? 'status:503' : 'image'));
    const error = await failure(generator().generate(request({ prompt: 'fails once' })));
    expect(error.httpStatus).toBe(503);
    // The SDK retries before it gives up, so any retry would have reached the server by now.
    expect(server.calls()).toBe(before + 1);
    expect((await server.settled(before + 1)).outcome).toBe('answered');
    // And the next request the server sees is the test's own marker, not a late retry.
    await firstValueFrom(generator().generate(request({ prompt: 'a marker call' })));
    expect(server.requests.slice(before).map((r) => [r.prompt, r.behavior])).toEqual([
      ['fails once', 'status:503'],
      ['a marker call', 'image'],
    ]);
  });

  it('429 -> rate_limited with retryAfterMs from RetryInfo.retryDelay', async () => {
    only({ status: 429, retryDelay: '1.5s', retryAfter: '9' });
    const error = await failure(generator().generate(request()));
    expect(error).toMatchObject({ errorClass: 'rate_limited', retryAfterMs: 1500, httpStatus: 429 });
  });

  it('429 without RetryInfo -> retryAfterMs from the Retry-After header', async () => {
    only({ status: 429, retryDelay: null, retryAfter: '3' });
    const error = await failure(generator().generate(request()));
    expect(error).toMatchObject({ errorClass: 'rate_limited', retryAfterMs: 3000 });
  });

  it('a wrong API key -> auth (the server answers 403)', async () => {
    const error = await failure(generator({ apiKey: 'wrong-key' }).generate(request()));
    expect(error).toMatchObject({ errorClass: 'auth', httpStatus: 403, retryable: false });
    expect(server.requests.at(-1)?.apiKeyOk).toBe(false);
  });

  it('a hung server -> timeout after timeoutMs, and the server sees the connection close', async () => {
    only('hang');
    const started = Date.now();
    const error = await failure(generator({ timeoutMs: 300 }).generate(request()));
    expect(error.errorClass).toBe('timeout');
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    const n = server.requests.at(-1)?.n ?? -1;
    expect((await server.settled(n)).outcome).toBe('client_closed');
  }, 5_000);

  it('unsubscribing aborts the request: nothing is emitted and the server sees the connection close', async () => {
    only('hang');
    const before = server.calls();
    const events: string[] = [];
    const subscription = generator().generate(request()).subscribe({
      next: () => events.push('next'),
      error: () => events.push('error'),
      complete: () => events.push('complete'),
    });
    while (server.calls() === before) await new Promise((r) => setTimeout(r, 10));
    const n = server.requests.at(-1)?.n ?? -1;
    expect(server.requests.at(-1)?.outcome).toBe('pending');
    subscription.unsubscribe();
    expect((await server.settled(n)).outcome).toBe('client_closed');
    await new Promise((r) => setTimeout(r, 50));
    expect(events).toEqual([]);
  }, 5_000);

  it('a server that is gone -> network', async () => {
    const gone = await startFakeGeminiServer({ apiKey: API_KEY });
    const url = gone.url;
    await gone.close();
    const g = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: url, timeoutMs: 5_000 });
    expect((await failure(g.generate(request()))).errorClass).toBe('network');
  });

  it('the generator never prints its key', () => {
    const g = generator();
    expect(JSON.stringify(g)).not.toContain(API_KEY);
  });
});

describe('GeminiImageGenerator with an injected client (virtual time)', () => {
  it('the timeout runs on the injected scheduler and does not wait for the client to give up', () => {
    const scheduler = new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
    const signals: AbortSignal[] = [];
    const neverAnswers: GeminiModelsClient = {
      generateContent: (params) => {
        signals.push(params.config.abortSignal);
        return new Promise(() => {});
      },
    };
    scheduler.run(({ expectObservable }) => {
      const g = new GeminiImageGenerator({ apiKey: 'k', client: neverAnswers, timeoutMs: 250, scheduler });
      const classOf = g.generate(request()).pipe(catchError((e: PipelineError) => of(e.errorClass)));
      expectObservable(classOf).toBe('250ms (t|)', { t: 'timeout' });
    });
    expect(signals).toHaveLength(1);
    expect(signals[0]?.aborted).toBe(true);
  });

  it('is cold: the client is called only on subscription, once per subscription', () => {
    const signals: AbortSignal[] = [];
    const client: GeminiModelsClient = {
      generateContent: (params) => {
        signals.push(params.config.abortSignal);
        return new Promise(() => {});
      },
    };
    const call = new GeminiImageGenerator({ apiKey: 'k', client }).generate(request());
    expect(signals).toHaveLength(0);
    const first = call.subscribe();
    expect(signals).toHaveLength(1);
    const second = call.subscribe();
    expect(signals).toHaveLength(2);
    first.unsubscribe();
    second.unsubscribe();
    expect(signals.map((s) => s.aborted)).toEqual([true, true]);
  });

  it('unsubscribing aborts the signal handed to the client', () => {
    const signals: AbortSignal[] = [];
    const client: GeminiModelsClient = {
      generateContent: (params) => {
        signals.push(params.config.abortSignal);
        return new Promise(() => {});
      },
    };
    const subscription = new GeminiImageGenerator({ apiKey: 'k', client }).generate(request()).subscribe();
    expect(signals[0]?.aborted).toBe(false);
    subscription.unsubscribe();
    expect(signals[0]?.aborted).toBe(true);
  });
});
