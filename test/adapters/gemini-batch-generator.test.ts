import sharp from 'sharp';
import { firstValueFrom } from 'rxjs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { GeminiBatchGenerator, jsonLines, type GeminiBatchGeneratorConfig } from '../../src/adapters/gemini-batch-generator.js';
import { PipelineError } from '../../src/domain/error-class.js';
import { batchRequestKey, type BatchRequest, type BatchResponse, type BatchStatus, type GenerationRequest } from '../../src/domain/ports.js';
import {
  BATCH_STAMP_BASE,
  randomMixBehavior,
  startFakeGeminiServer,
  type FakeBatchItem,
  type FakeBatchItemBehavior,
  type FakeBatchRequestRecord,
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

  it('above maxInlineBytes the batch travels as a JSONL file: uploaded once, created from the file, keys round-trip, images decode, errors are classified, missing ones are absent', async () => {
    const classes: Record<number, FakeBatchItemBehavior> = { 1: 'status:429', 3: 'missing', 5: 'status:400', 6: 'finish:IMAGE_SAFETY', 8: 'corrupt', 9: 'thought_image', 10: 'status:503' };
    const server = await start({ batchBehavior: ({ index }) => classes[index] ?? 'image' });
    const batches = generator(server, { maxInlineBytes: 2000 });
    const requests = attempts(12);

    const name = await firstValueFrom(batches.createBatch('job-b/big', requests));

    // One upload (a resumable start, then one `upload, finalize` with every byte), then a create from the file.
    expect(server.fileCalls()).toEqual({ uploadStart: 1, upload: 1, get: 0, download: 0 });
    expect(server.batchCalls().create).toBe(1);
    const input = server.files[0];
    expect(input).toMatchObject({ source: 'upload', mimeType: 'jsonl', displayName: 'job-b/big', chunks: 1 });
    const batch = server.batches[0];
    expect(batch).toMatchObject({ name, source: 'file', inputFile: input?.name, displayName: 'job-b/big', model: 'models/gemini-2.5-flash-image' });
    expect(batch?.requestBytes).toBeLessThan(2000); // the create body names the file; the requests are not in it
    // The file: one `{"key", "request"}` line per request, in order, the request as the inline create would carry it.
    const lines = (server.fileContent(input?.name ?? '')?.toString('utf8') ?? '').split('\n').filter((l) => l !== '');
    expect(input?.sizeBytes).toBeGreaterThan(2000);
    expect(lines).toHaveLength(12);
    for (const [i, line] of lines.entries()) {
      const parsed = JSON.parse(line) as { key: string; request: { contents: unknown[]; generationConfig: unknown } };
      expect(Object.keys(parsed).sort()).toEqual(['key', 'request']);
      expect(parsed.key).toBe(requests[i]?.key);
      expect(parsed.request.generationConfig).toEqual({ responseModalities: ['IMAGE'], imageConfig: { aspectRatio: '16:9' } }); // the default model's modalities
    }
    expect(batch?.requests.map((r) => r.key)).toEqual(requests.map((r) => r.key));
    expect(batch?.requests[0]).toMatchObject({ prompt: 'a lighthouse at dusk #0', aspectRatio: '16:9', inputImages: [{ mimeType: 'image/jpeg', byteSize: inputJpeg.byteLength }] });

    const done = await settle(batches, name);

    expect(done.state).toBe('succeeded');
    expect(batch?.responsesFile).toMatch(/^files\//);
    expect(server.fileCalls().download).toBe(1);
    expect(server.files.find((f) => f.name === batch?.responsesFile)).toMatchObject({ source: 'batch_output', downloads: 1 });
    const responses = byKey(done.responses);
    const expectedClass: Record<string, string> = {
      'status:429': 'rate_limited',
      'status:400': 'invalid_request',
      'status:503': 'overloaded',
      'finish:IMAGE_SAFETY': 'safety_blocked',
      corrupt: 'corrupt_image',
    };
    for (const record of batch?.requests ?? []) {
      const key = record.key ?? '';
      const response = responses.get(key);
      if (record.behavior === 'missing') {
        expect(response).toBeUndefined();
      } else if (record.behavior === 'image' || record.behavior === 'thought_image') {
        if (response === undefined || !('image' in response)) throw new Error(`expected an image for ${key}`);
        expect(response.image.mimeType).toBe('image/png');
        expect(await readStamp(response.image.bytes)).toBe(record.servedStamp);
        expect(response.image.usage).toMatchObject({ promptTokens: 12, outputTokens: 1290, imageCount: 1 });
      } else {
        if (response === undefined || !('error' in response)) throw new Error(`expected an error for ${key} (${record.behavior})`);
        expect(response.error.errorClass).toBe(expectedClass[record.behavior]);
        if (record.behavior === 'status:429') expect(response.error.retryAfterMs).toBe(2000);
      }
    }
    expect(responses.size).toBe(11);
    expect(server.calls()).toBe(0);
  });

  it('up to maxInlineBytes the requests travel inline (no upload), and both ways carry the same requests', async () => {
    const server = await start();
    const requests = [attempt(0, { aspectRatio: '4:3' }), attempt(1, { input: null, inputAttachId: null })];

    const inlineName = await firstValueFrom(generator(server, { maxInlineBytes: 2000 }).createBatch('job-b/small', requests));
    expect(server.fileCalls()).toEqual({ uploadStart: 0, upload: 0, get: 0, download: 0 });
    expect(server.batches[0]).toMatchObject({ name: inlineName, source: 'inline', inputFile: undefined });
    const inlineDone = await settle(generator(server), inlineName);
    expect(inlineDone.responses).toHaveLength(2);
    expect(server.fileCalls().download).toBe(0);
    expect(server.batches[0]?.responsesFile).toBeUndefined();

    // The same requests above a lower limit: through a file, and the server reads the same requests out of it.
    await firstValueFrom(generator(server, { maxInlineBytes: 500 }).createBatch('job-b/small-file', requests));
    expect(server.fileCalls().uploadStart).toBe(1);
    expect(server.batches[1]?.source).toBe('file');
    const describe = (r: FakeBatchRequestRecord) => ({ key: r.key, prompt: r.prompt, aspectRatio: r.aspectRatio, imageSize: r.imageSize, responseModalities: r.responseModalities, inputImages: r.inputImages });
    expect(server.batches[1]?.requests.map(describe)).toEqual(server.batches[0]?.requests.map(describe));
  });

  it('a file above the SDK\'s 8 MB upload chunk goes up in several chunks at the right offsets, and its batch answers', async () => {
    const server = await start();
    const batches = generator(server, { maxInlineBytes: 1_000_000 });
    // Inputs are sent as they are (base64): 5 MB of bytes each make a file of about 13.4 MB.
    const big = { bytes: new Uint8Array(5 * 1024 * 1024).fill(7), mimeType: 'image/jpeg' as const };
    const requests = [attempt(0, { input: big }), attempt(1, { input: big })];

    const name = await firstValueFrom(batches.createBatch('job-b/chunks', requests));

    expect(server.fileCalls()).toMatchObject({ uploadStart: 1, upload: 2 });
    expect(server.files[0]).toMatchObject({ chunks: 2, source: 'upload' });
    expect(server.files[0]?.sizeBytes).toBeGreaterThan(8 * 1024 * 1024);
    expect(server.batches[0]?.requests.map((r) => r.inputImages)).toEqual([[{ mimeType: 'image/jpeg', byteSize: big.bytes.byteLength }], [{ mimeType: 'image/jpeg', byteSize: big.bytes.byteLength }]]);
    const done = await settle(batches, name);
    expect([...byKey(done.responses).keys()].sort()).toEqual(requests.map((r) => r.key).sort());
  });

  it('a JSONL file above maxFileBytes is refused as invalid_request naming the limit, before anything is sent', async () => {
    const server = await start();
    const batches = generator(server, { maxInlineBytes: 1000, maxFileBytes: 3000 });
    const error = await failure(firstValueFrom(batches.createBatch('job-b/huge', attempts(6))));
    expect(error.errorClass).toBe('invalid_request');
    expect(error.message).toMatch(/Files API's limit of 3000 bytes/);
    expect(server.fileCalls().uploadStart).toBe(0);
    expect(server.batchCalls().create).toBe(0);
    // The default limit is the Files API's 2 GB.
    expect(generator(server).config.maxFileBytes).toBe(2 * 1024 * 1024 * 1024);
  });

  it('upload and download failures are classified like every other call, with no retry inside', async () => {
    const server = await start({
      fileUploadBehavior: (n) => (n === 1 ? { status: 429, retryDelay: '5s', retryAfter: null } : n === 2 ? 'status:500' : 'image'),
      fileDownloadBehavior: (n) => (n === 1 ? 'status:503' : n === 2 ? 'drop' : n === 3 ? 'status:404' : 'image'),
    });
    const batches = generator(server, { maxInlineBytes: 2000 });

    const limited = await failure(firstValueFrom(batches.createBatch('job-b/big', attempts(5))));
    expect(limited.errorClass).toBe('rate_limited');
    expect(limited.retryAfterMs).toBe(5000);
    const overloaded = await failure(firstValueFrom(batches.createBatch('job-b/big', attempts(5))));
    expect(overloaded.errorClass).toBe('overloaded');
    expect(server.fileCalls()).toMatchObject({ uploadStart: 2, upload: 0 });
    expect(server.batchCalls().create).toBe(0); // no batch without its file

    const name = await firstValueFrom(batches.createBatch('job-b/big', attempts(5)));
    expect((await firstValueFrom(batches.getBatch(name))).state).toBe('running');
    expect((await failure(firstValueFrom(batches.getBatch(name)))).errorClass).toBe('overloaded');
    expect((await failure(firstValueFrom(batches.getBatch(name)))).errorClass).toBe('network'); // the download cut mid-body
    const gone = await failure(firstValueFrom(batches.getBatch(name)));
    expect(gone.errorClass).toBe('invalid_request');
    expect(gone.httpStatus).toBe(404);
    const done = await firstValueFrom(batches.getBatch(name));
    expect(done.responses).toHaveLength(5);
    expect(server.fileCalls().download).toBe(4);
    for (const e of [limited, overloaded, gone]) expect(e.message).not.toContain(API_KEY);
  });

  it('a download that never answers times out after timeoutMs (the call is aborted)', async () => {
    const server = await start({ fileDownloadBehavior: () => 'hang', batchPlan: () => ({ runningGets: 0 }) });
    const batches = generator(server, { maxInlineBytes: 1000, timeoutMs: 300 });
    const name = await firstValueFrom(batches.createBatch('job-b/slow-download', attempts(3)));
    const error = await failure(firstValueFrom(batches.getBatch(name)));
    expect(error.errorClass).toBe('timeout');
    expect(error.message).toMatch(/batches.get timed out/);
    expect(server.fileCalls().download).toBe(1);
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

describe('jsonLines (the responses file, read as it streams)', () => {
  async function linesOf(chunks: readonly (string | Uint8Array)[]): Promise<{ lines: string[]; progress: number }> {
    let progress = 0;
    async function* source(): AsyncGenerator<Uint8Array> {
      for (const c of chunks) yield typeof c === 'string' ? new TextEncoder().encode(c) : c;
    }
    const lines: string[] = [];
    for await (const line of jsonLines(source(), () => progress++)) lines.push(line);
    return { lines, progress };
  }

  it('gives whole lines whatever the chunk boundaries: a line over several chunks, several lines in one, CRLF, blank lines, no final newline', async () => {
    const { lines, progress } = await linesOf(['{"key":"a",', '"v":1}\n{"key":"b"}\r\n\n', '{"key"', ':"c"}\n\n{"key":"d"}']);
    expect(lines).toEqual(['{"key":"a","v":1}', '{"key":"b"}', '{"key":"c"}', '{"key":"d"}']);
    expect(progress).toBe(4); // one per chunk
  });

  it('keeps a UTF-8 character cut across chunks whole', async () => {
    const bytes = new TextEncoder().encode('{"key":"é—🙂"}\n');
    const cut = bytes.indexOf(0xf0) + 2; // inside the 4-byte emoji
    const { lines } = await linesOf([bytes.subarray(0, 9), bytes.subarray(9, cut), bytes.subarray(cut)]);
    expect(lines).toEqual(['{"key":"é—🙂"}']);
  });

  it('an empty body has no lines', async () => {
    expect((await linesOf([])).lines).toEqual([]);
    expect((await linesOf(['\n', '\r\n'])).lines).toEqual([]);
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

  it('the Files API: resumable upload (start, upload, upload+finalize at checked offsets), file metadata, a batch from the file and its responses file', async () => {
    const server = await start({ batchBehavior: ({ index }) => (index === 1 ? 'status:429' : index === 2 ? 'missing' : 'image') });
    const headers = { 'x-goog-api-key': API_KEY };
    const jsonl = ['k0', 'k1', 'k2'].map((key, i) => JSON.stringify({ key, request: { contents: [{ role: 'user', parts: [{ text: `p${i}` }] }], generationConfig: { imageConfig: { aspectRatio: '1:1' } } } })).join('\n') + '\n';
    const bytes = Buffer.from(jsonl, 'utf8');

    const startAnswer = await fetch(`${server.url}/upload/v1beta/files`, {
      method: 'POST',
      headers: {
        ...headers,
        'content-type': 'application/json',
        'x-goog-upload-protocol': 'resumable',
        'x-goog-upload-command': 'start',
        'x-goog-upload-header-content-length': String(bytes.byteLength),
        'x-goog-upload-header-content-type': 'jsonl',
      },
      body: JSON.stringify({ file: { displayName: 'wire-input' } }),
    });
    expect(startAnswer.status).toBe(200);
    expect(startAnswer.headers.get('x-goog-upload-status')).toBe('active');
    const uploadUrl = startAnswer.headers.get('x-goog-upload-url') ?? '';
    expect(uploadUrl).toMatch(/\/upload\/v1beta\/files\?upload_id=/);
    const half = Math.floor(bytes.byteLength / 2);
    const chunk = (command: string, offset: number, body: Uint8Array) =>
      fetch(uploadUrl, { method: 'POST', headers: { ...headers, 'x-goog-upload-command': command, 'x-goog-upload-offset': String(offset) }, body: new Blob([new Uint8Array(body)]) });
    const first = await chunk('upload', 0, bytes.subarray(0, half));
    expect(first.headers.get('x-goog-upload-status')).toBe('active');
    expect((await chunk('upload, finalize', 0, bytes.subarray(half))).status).toBe(400); // wrong offset
    const final = await chunk('upload, finalize', half, bytes.subarray(half));
    expect(final.status).toBe(200);
    expect(final.headers.get('x-goog-upload-status')).toBe('final');
    const file = ((await final.json()) as { file: { name: string; sizeBytes: string; state: string; mimeType: string; displayName: string } }).file;
    expect(file).toMatchObject({ name: expect.stringMatching(/^files\//), sizeBytes: String(bytes.byteLength), state: 'ACTIVE', mimeType: 'jsonl', displayName: 'wire-input' });
    expect(server.fileContent(file.name)?.equals(bytes)).toBe(true);
    expect((await call(server, 'GET', `/v1beta/${file.name}`)).json).toMatchObject({ name: file.name, state: 'ACTIVE', source: 'UPLOADED' });

    const created = await call(server, 'POST', '/v1beta/models/gemini-2.5-flash-image:batchGenerateContent', { batch: { displayName: 'from-file', inputConfig: { fileName: file.name } } });
    expect(created.status).toBe(200);
    expect(server.batches[0]).toMatchObject({ source: 'file', inputFile: file.name });
    expect(server.batches[0]?.requests.map((r) => [r.key, r.prompt])).toEqual([['k0', 'p0'], ['k1', 'p1'], ['k2', 'p2']]);
    const id = String(created.json.name).slice('batches/'.length);
    await call(server, 'GET', `/v1beta/batches/${id}`);
    const done = await call(server, 'GET', `/v1beta/batches/${id}`);
    expect(done.json).toMatchObject({ done: true, metadata: { state: 'BATCH_STATE_SUCCEEDED', output: { responsesFile: expect.stringMatching(/^files\//) } } });
    expect(done.json.response.responsesFile).toBe(done.json.metadata.output.responsesFile);
    expect(done.json.metadata.output.inlinedResponses).toBeUndefined();

    // Served under the guide's `/download/v1beta/...` and the SDK's `/v1beta/...` alike, with the key only.
    const responsesFile = String(done.json.metadata.output.responsesFile);
    for (const path of [`/download/v1beta/${responsesFile}:download?alt=media`, `/v1beta/${responsesFile}:download?alt=media`]) {
      const answer = await fetch(`${server.url}${path}`, { headers });
      expect(answer.status).toBe(200);
      // `any`: whatever JSON the fake wrote, probed field by field.
      const lines = (await answer.text()).split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as any);
      expect(lines).toHaveLength(2); // k2 is missing
      expect(lines[0]).toMatchObject({ key: 'k0', response: { candidates: [{ content: { parts: [{ inlineData: { mimeType: 'image/png' } }] } }] } });
      expect(lines[1]).toMatchObject({ key: 'k1', error: { code: 8, details: [{ retryDelay: '2s' }] } });
    }
    expect((await fetch(`${server.url}/download/v1beta/${responsesFile}:download?alt=media`)).status).toBe(401);
    expect((await fetch(`${server.url}/download/v1beta/files/nope:download?alt=media`, { headers })).status).toBe(404);
    expect((await call(server, 'POST', '/v1beta/models/gemini-2.5-flash-image:batchGenerateContent', { batch: { inputConfig: { fileName: 'files/nope' } } })).status).toBe(404);
    expect(server.fileCalls()).toEqual({ uploadStart: 1, upload: 3, get: 1, download: 4 });
  });
});
