import sharp from 'sharp';
import { firstValueFrom } from 'rxjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GeminiBatchGenerator, type GeminiBatchGeneratorConfig } from '../../src/adapters/gemini-batch-generator.js';
import { PipelineError } from '../../src/domain/error-class.js';
import { batchRequestKey, type BatchRequest, type BatchResponse, type BatchStatus, type GenerationRequest } from '../../src/domain/ports.js';
import {
  BATCH_STAMP_BASE,
  randomMixBehavior,
  startFakeGeminiServer,
  type FakeBatchItem,
  type FakeBatchItemBehavior,
  type FakeGeminiServer,
  type FakeGeminiServerOptions,
} from '../support/fake-gemini-server.js';
import { Gate } from '../support/gate.js';
import { readStamp } from '../support/stamped-image.js';

const API_KEY = 'batch-key-DO-NOT-LEAK-7319';
let inputJpeg: Uint8Array;
const open: FakeGeminiServer[] = [];

beforeAll(async () => {
  inputJpeg = new Uint8Array(await sharp({ create: { width: 40, height: 30, channels: 3, background: { r: 20, g: 140, b: 90 } } }).jpeg().toBuffer());
});
afterEach(async () => {
  await Promise.all(open.splice(0).map((s) => s.close()));
});

async function start(options: FakeGeminiServerOptions = {}): Promise<FakeGeminiServer> {
  const server = await startFakeGeminiServer({ apiKey: API_KEY, ...options });
  open.push(server);
  return server;
}

function generator(server: FakeGeminiServer, overrides: Partial<GeminiBatchGeneratorConfig> = {}): GeminiBatchGenerator {
  return new GeminiBatchGenerator({ apiKey: API_KEY, baseUrl: server.url, timeoutMs: 10_000, ...overrides });
}

function attempt(slotIndex: number, overrides: Partial<GenerationRequest> = {}): BatchRequest {
  const request: GenerationRequest = {
    jobId: 'job-b',
    stageIndex: 0,
    slotIndex,
    attempt: 1,
    prompt: `a lighthouse at dusk #${slotIndex}`,
    aspectRatio: '16:9',
    inputAttachId: 'attach-1',
    input: { bytes: inputJpeg, mimeType: 'image/jpeg' },
    ...overrides,
  };
  return { key: batchRequestKey(request), request };
}

function attempts(count: number): BatchRequest[] {
  return Array.from({ length: count }, (_, i) => attempt(i));
}

/** Polls `getBatch` until the batch leaves pending/running (the fake moves one step per GET). */
async function settle(batches: GeminiBatchGenerator, name: string, maxGets = 10): Promise<BatchStatus> {
  for (let i = 0; i < maxGets; i++) {
    const status = await firstValueFrom(batches.getBatch(name));
    if (status.state !== 'pending' && status.state !== 'running') return status;
  }
  throw new Error(`batch ${name} did not end within ${maxGets} gets`);
}

async function failure(promise: Promise<unknown>): Promise<PipelineError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PipelineError);
  return error as PipelineError;
}

function byKey(responses: readonly BatchResponse[] | undefined): Map<string, BatchResponse> {
  return new Map((responses ?? []).map((r) => [r.key, r]));
}

describe('GeminiBatchGenerator against the fake Gemini server (real SDK)', () => {
  it('round trip: create answers the batch name, get goes pending -> running -> succeeded with one image per key', async () => {
    const server = await start({ batchPlan: () => ({ pendingGets: 1, runningGets: 1 }) });
    const batches = generator(server);
    const requests = attempts(3);

    const name = await firstValueFrom(batches.createBatch('job-b/round-1', requests));
    expect(name).toBe(server.batches[0]?.name);
    expect(name).toMatch(/^batches\//);

    expect((await firstValueFrom(batches.getBatch(name))).state).toBe('pending');
    expect((await firstValueFrom(batches.getBatch(name))).state).toBe('running');
    const done = await firstValueFrom(batches.getBatch(name));
    expect(done.state).toBe('succeeded');
    expect(done.name).toBe(name);
    expect(done.error).toBeUndefined();
    const responses = byKey(done.responses);
    expect([...responses.keys()].sort()).toEqual(requests.map((r) => r.key).sort());
    for (const [index, r] of requests.entries()) {
      const response = responses.get(r.key);
      if (response === undefined || !('image' in response)) throw new Error(`no image for ${r.key}`);
      expect(response.image.mimeType).toBe('image/png');
      // The image is the one the server stamped for this very request: keys are not shuffled.
      expect(await readStamp(response.image.bytes)).toBe(BATCH_STAMP_BASE + (server.batches[0]?.requests[index]?.n ?? -1));
      expect(response.image.usage).toMatchObject({ promptTokens: 12, outputTokens: 1290, imageCount: 1 });
    }
    expect(server.batchCalls()).toMatchObject({ create: 1, get: 3 });
    expect(server.calls()).toBe(0); // batch calls are not interactive calls
  });

  it('the request bodies carry the prompt, the input image, aspectRatio/imageSize, the model modalities and the key metadata', async () => {
    const server = await start();
    const batches = generator(server, { model: 'gemini-3-pro-image-preview' });
    const withSize = attempt(0, { aspectRatio: '4:3', imageSize: '2K' });
    const withoutInput = attempt(1, { input: null, inputAttachId: null });

    await firstValueFrom(batches.createBatch('job-b/bodies', [withSize, withoutInput]));

    const batch = server.batches[0];
    expect(batch?.model).toBe('models/gemini-3-pro-image-preview');
    expect(batch?.displayName).toBe('job-b/bodies');
    expect(batch?.requests).toEqual([
      expect.objectContaining({
        key: 'job-b/0/0/1',
        metadata: { key: 'job-b/0/0/1' },
        prompt: 'a lighthouse at dusk #0',
        aspectRatio: '4:3',
        imageSize: '2K',
        responseModalities: ['TEXT', 'IMAGE'],
        inputImages: [{ mimeType: 'image/jpeg', byteSize: inputJpeg.byteLength }],
      }),
      expect.objectContaining({ key: 'job-b/0/1/1', prompt: 'a lighthouse at dusk #1', aspectRatio: '16:9', imageSize: undefined, inputImages: [] }),
    ]);
  });

  it('a 50-request batch with a 20% seeded failure share: each response maps to its key, images decode, errors are classified, missing ones are absent', async () => {
    const mix = randomMixBehavior({ seed: 17, failureRate: 0.2, classes: ['status:429', 'status:503', 'status:400', 'finish:IMAGE_SAFETY', 'text_only', 'corrupt'] });
    // Every ninth request gets no response at all; thought images are drafts the parser must skip.
    const behavior = (item: FakeBatchItem): FakeBatchItemBehavior => (item.index % 9 === 4 ? 'missing' : item.index % 11 === 2 ? 'thought_image' : mix(item));
    const server = await start({ batchBehavior: behavior });
    const batches = generator(server);
    const requests = attempts(50);

    const name = await firstValueFrom(batches.createBatch('job-b/round-1', requests));
    const done = await settle(batches, name);

    expect(done.state).toBe('succeeded');
    const responses = byKey(done.responses);
    const records = server.batches[0]?.requests ?? [];
    expect(records).toHaveLength(50);
    const failed = records.filter((r) => r.behavior !== 'image' && r.behavior !== 'thought_image' && r.behavior !== 'missing');
    expect(failed.length).toBeGreaterThanOrEqual(4); // the seed gives a real share of failures, not none
    const expectedClass: Record<string, string> = {
      'status:429': 'rate_limited',
      'status:503': 'overloaded',
      'status:400': 'invalid_request',
      'finish:IMAGE_SAFETY': 'safety_blocked',
      text_only: 'no_image',
      corrupt: 'corrupt_image',
    };
    for (const record of records) {
      const key = record.key ?? '';
      expect(key).toBe(requests[record.index]?.key);
      const response = responses.get(key);
      if (record.behavior === 'missing') {
        expect(response).toBeUndefined();
      } else if (record.behavior === 'image' || record.behavior === 'thought_image') {
        if (response === undefined || !('image' in response)) throw new Error(`expected an image for ${key}`);
        expect(await readStamp(response.image.bytes)).toBe(record.servedStamp);
      } else {
        if (response === undefined || !('error' in response)) throw new Error(`expected an error for ${key} (${record.behavior})`);
        expect(response.error.errorClass).toBe(expectedClass[record.behavior]);
        if (record.behavior === 'status:429') expect(response.error.retryAfterMs).toBe(2000);
      }
    }
    expect(responses.size).toBe(records.filter((r) => r.behavior !== 'missing').length);
  });

  it('a batch that fails whole and one that expires report their state and the provider reason', async () => {
    const server = await start({
      batchPlan: ({ seq }) => (seq === 1 ? { outcome: 'failed', reason: 'Internal error while processing the batch.' } : { outcome: 'expired' }),
    });
    const batches = generator(server);

    const failedName = await firstValueFrom(batches.createBatch('job-b/fails', attempts(2)));
    const expiredName = await firstValueFrom(batches.createBatch('job-b/expires', attempts(2)));

    const failed = await settle(batches, failedName);
    expect(failed).toEqual({ name: failedName, state: 'failed', error: 'Internal error while processing the batch.' });
    const expired = await settle(batches, expiredName);
    expect(expired.state).toBe('expired');
    expect(expired.error).toMatch(/expired/);
    expect(expired.responses).toBeUndefined();
  });

  it('cancel of a running batch: the batch ends cancelled, with no responses', async () => {
    const gate = new Gate(); // never opened: the batch would run forever
    const server = await start({ batchPlan: () => ({ hold: gate.hold({ n: 1 }) ?? Promise.resolve() }) });
    const batches = generator(server);
    const name = await firstValueFrom(batches.createBatch('job-b/slow', attempts(2)));
    for (let i = 0; i < 4; i++) expect((await firstValueFrom(batches.getBatch(name))).state).toBe('running');

    await firstValueFrom(batches.cancelBatch(name), { defaultValue: undefined });

    const status = await firstValueFrom(batches.getBatch(name));
    expect(status.state).toBe('cancelled');
    expect(status.responses).toBeUndefined();
    expect(status.error).toMatch(/cancelled/);
    expect(server.batches[0]?.state).toBe('BATCH_STATE_CANCELLED');
    expect(server.batchCalls().cancel).toBe(1);
  });

  it('findBatch finds the batch by displayName after the create answer was lost, so no second batch is created', async () => {
    const server = await start({ batchCreateBehavior: (n) => (n === 3 ? 'drop_before_headers' : 'image'), batchListPageSize: 2 });
    const batches = generator(server, { listPageSize: 2 });
    await firstValueFrom(batches.createBatch('job-a/round-1', attempts(1)));
    await firstValueFrom(batches.createBatch('job-b/round-1', attempts(1)));

    const lost = await failure(firstValueFrom(batches.createBatch('job-b/round-2', attempts(2))));
    expect(lost.errorClass).toBe('network');
    expect(server.batches).toHaveLength(3); // the server did create it

    // Three batches over two pages of two: the pager reads both.
    const found = await firstValueFrom(batches.findBatch('job-b/round-2'));
    expect(found).toBe(server.batches[2]?.name);
    expect(await firstValueFrom(batches.findBatch('job-a/round-1'))).toBe(server.batches[0]?.name);
    expect(await firstValueFrom(batches.findBatch('job-c/round-1'))).toBeNull();
    expect(server.batches).toHaveLength(3);
    expect(server.batchCalls().create).toBe(3);
  });

  it('create answered 429 -> rate_limited with the RetryInfo delay; 500 -> overloaded; nothing is created', async () => {
    const server = await start({ batchCreateBehavior: (n) => (n === 1 ? { status: 429, retryDelay: '7s', retryAfter: null } : 'status:500') });
    const batches = generator(server);

    const limited = await failure(firstValueFrom(batches.createBatch('job-b/round-1', attempts(2))));
    expect(limited.errorClass).toBe('rate_limited');
    expect(limited.retryAfterMs).toBe(7000);
    expect(limited.httpStatus).toBe(429);
    const overloaded = await failure(firstValueFrom(batches.createBatch('job-b/round-1', attempts(2))));
    expect(overloaded.errorClass).toBe('overloaded');
    expect(server.batches).toHaveLength(0);
    expect(server.batchCalls().create).toBe(2); // no retry inside the adapter
  });

  it('a wrong key is auth on every call, and the key never shows in a message', async () => {
    const server = await start();
    const batches = new GeminiBatchGenerator({ apiKey: 'not-the-key-SECRET-4711', baseUrl: server.url });
    const denied = await failure(firstValueFrom(batches.getBatch('batches/whatever')));
    expect(denied.errorClass).toBe('auth');
    expect(denied.message).not.toContain('not-the-key-SECRET-4711');
    expect(JSON.stringify(batches)).not.toContain('SECRET');
  });

  it('a get of an unknown batch is invalid_request (404)', async () => {
    const server = await start();
    const error = await failure(firstValueFrom(generator(server).getBatch('batches/nope')));
    expect(error.errorClass).toBe('invalid_request');
    expect(error.httpStatus).toBe(404);
  });

  it('requests above the inline limit are refused as invalid_request before anything is sent', async () => {
    const server = await start();
    const batches = generator(server, { maxInlineBytes: 1024 });
    const error = await failure(firstValueFrom(batches.createBatch('job-b/big', attempts(3))));
    expect(error.errorClass).toBe('invalid_request');
    expect(error.message).toMatch(/inline limit of 1024 bytes/);
    expect(server.batchCalls().create).toBe(0);
  });

  it('an imageSize the model does not take is invalid_request, unsent', async () => {
    const server = await start();
    const error = await failure(firstValueFrom(generator(server).createBatch('job-b/size', [attempt(0, { imageSize: '2K' })])));
    expect(error.errorClass).toBe('invalid_request');
    expect(server.batchCalls().create).toBe(0);
  });

  it('a create that never answers times out after timeoutMs (the call is aborted)', async () => {
    const server = await start({ batchCreateBehavior: () => 'hang' });
    const batches = generator(server, { timeoutMs: 300 });
    const error = await failure(firstValueFrom(batches.createBatch('job-b/hang', attempts(1))));
    expect(error.errorClass).toBe('timeout');
    expect(error.message).toMatch(/batches.create timed out/);
  });
});

describe('the fake server speaks the Batch API wire format (raw HTTP, no SDK)', () => {
  async function call(server: FakeGeminiServer, method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> {
    const response = await fetch(`${server.url}${path}`, {
      method,
      headers: { 'content-type': 'application/json', 'x-goog-api-key': API_KEY },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    // `any`: whatever JSON the fake sent, probed field by field.
    return { status: response.status, json: (await response.json()) as any };
  }

  it('create, get, list and cancel use the paths and JSON shapes @google/genai 2.32 sends and reads', async () => {
    const server = await start({ batchBehavior: ({ index }) => (index === 1 ? 'status:429' : 'image') });
    const created = await call(server, 'POST', '/v1beta/models/gemini-2.5-flash-image:batchGenerateContent', {
      batch: {
        displayName: 'wire',
        inputConfig: {
          requests: {
            requests: [
              { request: { contents: [{ role: 'user', parts: [{ text: 'a' }] }], generationConfig: { imageConfig: { aspectRatio: '1:1' } } }, metadata: { key: 'k0' } },
              { request: { contents: [{ role: 'user', parts: [{ text: 'b' }] }] }, metadata: { key: 'k1' } },
            ],
          },
        },
      },
    });
    expect(created.status).toBe(200);
    expect(created.json).toMatchObject({ name: expect.stringMatching(/^batches\//), metadata: { displayName: 'wire', state: 'BATCH_STATE_PENDING', model: 'models/gemini-2.5-flash-image' } });
    expect(created.json.done).toBeUndefined();
    const id = String(created.json.name).slice('batches/'.length);

    expect((await call(server, 'GET', `/v1beta/batches/${id}`)).json.metadata.state).toBe('BATCH_STATE_RUNNING');
    const done = await call(server, 'GET', `/v1beta/batches/${id}`);
    expect(done.json).toMatchObject({ done: true, metadata: { state: 'BATCH_STATE_SUCCEEDED' } });
    const inlined = done.json.metadata.output.inlinedResponses.inlinedResponses;
    expect(inlined).toHaveLength(2);
    expect(inlined[0]).toMatchObject({ metadata: { key: 'k0' }, response: { candidates: [{ content: { parts: [{ inlineData: { mimeType: 'image/png' } }] } }] } });
    expect(inlined[1]).toMatchObject({ metadata: { key: 'k1' }, error: { code: 8, details: [{ retryDelay: '2s' }] } });

    const listed = await call(server, 'GET', '/v1beta/batches?pageSize=5');
    expect(listed.json.operations).toHaveLength(1);
    expect(listed.json.operations[0]).toMatchObject({ name: created.json.name, metadata: { displayName: 'wire' } });
    expect(listed.json.nextPageToken).toBeUndefined();

    // Cancelling an ended batch leaves it as it is.
    expect((await call(server, 'POST', `/v1beta/batches/${id}:cancel`, {})).status).toBe(200);
    expect(server.batches[0]?.state).toBe('BATCH_STATE_SUCCEEDED');
    expect((await call(server, 'GET', '/v1beta/batches/missing')).status).toBe(404);
  });
});
