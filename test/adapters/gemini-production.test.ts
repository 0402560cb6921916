/**
 * Issue 15 A, the adapter against a server speaking Gemini's protocol: where requests
 * go whatever the environment says, the model table (imageSize, modalities) reaching the
 * wire, and timeouts above the HTTP client's own defaults.
 */
import sharp from 'sharp';
import { GoogleGenAI } from '@google/genai';
import { firstValueFrom, VirtualTimeScheduler } from 'rxjs';
import { Agent, getGlobalDispatcher, setGlobalDispatcher, type Dispatcher } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import type { GenerationRequest } from '../../src/domain/ports.js';
import { GEMINI_API_BASE_URL, GeminiImageGenerator, genAiOptions } from '../../src/adapters/gemini-image-generator.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';

const API_KEY = 'fake-key-production-7777';
let server: FakeGeminiServer;
let inputPng: Uint8Array;

beforeAll(async () => {
  server = await startFakeGeminiServer({ apiKey: API_KEY });
  inputPng = new Uint8Array(await sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 9, g: 99, b: 199 } } }).png().toBuffer());
});
afterAll(() => server.close());
afterEach(() => {
  server.setBehavior(() => 'image');
});

function request(overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return { jobId: 'j', stageIndex: 0, slotIndex: 0, attempt: 1, prompt: 'a red kite', aspectRatio: '1:1', inputAttachId: 'a', input: { bytes: inputPng, mimeType: 'image/png' }, ...overrides };
}

/** Runs `fn` with environment variables set, restoring them after. */
async function withEnv<T>(vars: Record<string, string>, fn: () => Promise<T> | T): Promise<T> {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  try {
    return await fn();
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
}

describe('the client is pinned: the environment cannot move the key', () => {
  const hostile = { GOOGLE_GENAI_USE_VERTEXAI: 'true', GOOGLE_GEMINI_BASE_URL: 'http://127.0.0.1:9/elsewhere/', GOOGLE_CLOUD_PROJECT: 'someone-else', GOOGLE_CLOUD_LOCATION: 'us-central1' };

  it('the options say vertexai false and the base URL (Google when GEMINI_BASE_URL is unset)', () => {
    expect(genAiOptions({ apiKey: 'k', baseUrl: undefined, vertex: undefined })).toEqual({
      vertexai: false,
      apiKey: 'k',
      apiVersion: 'v1beta',
      httpOptions: { baseUrl: 'https://generativelanguage.googleapis.com/' },
    });
    expect(genAiOptions({ apiKey: 'k', baseUrl: 'http://127.0.0.1:1234', vertex: undefined }).httpOptions.baseUrl).toBe('http://127.0.0.1:1234');
  });

  it('the real SDK built with them, under GOOGLE_GENAI_USE_VERTEXAI=true and GOOGLE_GEMINI_BASE_URL, stays on the Gemini API at Google', async () => {
    await withEnv(hostile, () => {
      const ai = new GoogleGenAI({ ...genAiOptions({ apiKey: 'k', baseUrl: undefined, vertex: undefined }), httpOptions: { baseUrl: GEMINI_API_BASE_URL } });
      expect(ai.vertexai).toBe(false);
      // What the SDK would do without the pin (the bug): Vertex AI, and the environment's URL.
      expect(new GoogleGenAI({ apiKey: 'k' }).vertexai).toBe(true);
      // ApiClient is the SDK's own (not in its types); read through unknown.
      const client = (ai as unknown as { apiClient: { getBaseUrl(): string; getApiVersion(): string } }).apiClient;
      expect(client.getBaseUrl()).toBe(GEMINI_API_BASE_URL);
      expect(client.getApiVersion()).toBe('v1beta');
    });
  });

  it('a call under that environment reaches the configured Gemini endpoint with the key (not Vertex paths)', async () => {
    const before = server.calls();
    await withEnv(hostile, () => firstValueFrom(new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url }).generate(request())));
    expect(server.calls()).toBe(before + 1);
    expect(server.requests.at(-1)).toMatchObject({ model: 'gemini-2.5-flash-image', apiKeyOk: true });
  });

  it('Vertex AI as a choice: project, location, the location endpoint, no key, the SDK default API version', () => {
    expect(genAiOptions({ apiKey: '', baseUrl: undefined, vertex: { project: 'my-proj', location: 'us-central1' } })).toEqual({
      vertexai: true,
      project: 'my-proj',
      location: 'us-central1',
      httpOptions: { baseUrl: 'https://us-central1-aiplatform.googleapis.com/' },
    });
    expect(genAiOptions({ apiKey: '', baseUrl: undefined, vertex: { project: 'p-123456', location: 'global' } }).httpOptions.baseUrl).toBe('https://aiplatform.googleapis.com/');
    expect(genAiOptions({ apiKey: '', baseUrl: undefined, vertex: { project: 'p-123456', location: 'eu' } }).httpOptions.baseUrl).toBe('https://aiplatform.eu.rep.googleapis.com/');
  });

  it('the SDK built with Vertex options asks for a project path at that endpoint (nothing is sent: no network here)', async () => {
    await withEnv({ GOOGLE_VERTEX_BASE_URL: 'http://127.0.0.1:9/elsewhere/' }, () => {
      const ai = new GoogleGenAI({ ...genAiOptions({ apiKey: '', baseUrl: undefined, vertex: { project: 'my-proj', location: 'europe-west4' } }), httpOptions: { baseUrl: 'https://europe-west4-aiplatform.googleapis.com/' } });
      const client = (ai as unknown as { apiClient: { getBaseUrl(): string; isVertexAI(): boolean } }).apiClient;
      expect(client.isVertexAI()).toBe(true);
      expect(client.getBaseUrl()).toBe('https://europe-west4-aiplatform.googleapis.com/');
    });
  });
});

describe('the model table reaches the request', () => {
  it('gemini-3-pro-image-preview: imageSize "2K" and responseModalities TEXT, IMAGE are sent', async () => {
    const gen = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url, model: 'gemini-3-pro-image-preview' });
    await firstValueFrom(gen.generate(request({ imageSize: '2K', aspectRatio: '16:9' })));
    expect(server.requests.at(-1)).toMatchObject({ model: 'gemini-3-pro-image-preview', imageSize: '2K', aspectRatio: '16:9', responseModalities: ['TEXT', 'IMAGE'] });
  });

  it('gemini-3.1-flash-image-preview: imageSize "512" and the 1:8 ratio are sent', async () => {
    const gen = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url, model: 'gemini-3.1-flash-image-preview' });
    await firstValueFrom(gen.generate(request({ imageSize: '512', aspectRatio: '1:8' })));
    expect(server.requests.at(-1)).toMatchObject({ imageSize: '512', aspectRatio: '1:8' });
  });

  it('gemini-2.5-flash-image: no imageSize is sent, IMAGE only; asking for one is invalid_request before any call', async () => {
    const gen = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url });
    await firstValueFrom(gen.generate(request()));
    expect(server.requests.at(-1)).toMatchObject({ imageSize: undefined, responseModalities: ['IMAGE'] });
    const before = server.calls();
    const error = await firstValueFrom(gen.generate(request({ imageSize: '2K' }))).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(PipelineError);
    expect(error).toMatchObject({ errorClass: 'invalid_request', retryable: false });
    expect(server.calls()).toBe(before);
  });
});

describe('timeouts are the setting, not the HTTP client default', () => {
  let saved: Dispatcher;
  beforeAll(() => {
    saved = getGlobalDispatcher();
  });
  afterEach(() => setGlobalDispatcher(saved));

  it('a timeout above the HTTP client default is honoured (shortened clock: default 1 s, setting 6 s, answer at 2.5 s)', async () => {
    // Node's fetch default is 300 s headers/body; here the global dispatcher stands for it at
    // 1 s, the setting for "400 s" and the server's answer for "350 s". Without the adapter's
    // own dispatcher the call dies after 1-2 s (UND_ERR_HEADERS_TIMEOUT -> timeout): undici
    // checks its timeouts on a coarse tick, so the figures keep a second apart.
    const shortDefault = new Agent({ headersTimeout: 1000, bodyTimeout: 1000 });
    setGlobalDispatcher(shortDefault);
    const slow = await startFakeGeminiServer({ apiKey: API_KEY, latencyMs: 2500 });
    try {
      const started = performance.now();
      const image = await firstValueFrom(new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: slow.url, timeoutMs: 6000 }).generate(request()));
      expect(image.mimeType).toBe('image/png');
      expect(performance.now() - started).toBeGreaterThanOrEqual(2400);
    } finally {
      await slow.close();
      await shortDefault.close();
    }
  });

  it('the HTTP client itself carries the setting: with the adapter timer never firing, a hung call ends at the configured time', async () => {
    // A scheduler that never runs its timers: only the dispatcher's headersTimeout can end the call.
    const frozen = new VirtualTimeScheduler();
    const hung = await startFakeGeminiServer({ apiKey: API_KEY, behavior: () => 'hang' });
    try {
      const started = performance.now();
      const gen = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: hung.url, timeoutMs: 400, scheduler: frozen });
      const error = await firstValueFrom(gen.generate(request())).catch((e: unknown) => e);
      const elapsed = performance.now() - started;
      expect(error).toMatchObject({ errorClass: 'timeout' });
      expect(elapsed).toBeGreaterThanOrEqual(350);
      expect(elapsed).toBeLessThan(5000);
    } finally {
      await hung.close();
    }
  });
});
