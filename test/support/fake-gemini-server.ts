import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ASPECT_RATIOS, type AspectRatio } from '../../src/domain/aspect-ratio.js';
import { dimensionsForAspectRatio } from '../../src/adapters/image-dimensions.js';
import { MAX_STAMP, renderStampedPng } from './stamped-image.js';

/**
 * What the fake server does with one call.
 *
 * - `image`: one real PNG whose pixels carry the call number (see `readStamp`).
 * - `thought_image`: a thought text part, a thought image (stamp {@link THOUGHT_STAMP}),
 *   a caption, then the real image (stamp = call number) as the last part.
 * - `text_only`, `no_parts` (a candidate without content parts), `no_candidates`
 *   (`candidates: []`).
 * - `finish:<REASON>`: a candidate with that `finishReason` and no parts.
 * - `prompt_blocked`: no candidates, `promptFeedback.blockReason: 'PROHIBITED_CONTENT'`.
 * - `status:<code>`: a Google-style JSON error; 429 carries a `google.rpc.RetryInfo`
 *   with `retryDelay` (default `'2s'`) and a `Retry-After` header. Use the object form
 *   to choose those values (`retryDelay: null` / `retryAfter: null` leave them out) and
 *   the message (`message: 'bad key {key}'` echoes the key the client sent).
 * - `hang`: never answers; the call ends only when the client gives up (or `close()`).
 * - `drop`: sends headers and half a body, then destroys the socket.
 * - `drop_before_headers`: destroys the socket without answering.
 * - `corrupt`: an inline image part whose base64 bytes are not an image.
 */
export type FakeBehavior =
  | 'image'
  | 'thought_image'
  | 'text_only'
  | 'no_parts'
  | 'no_candidates'
  | `finish:${string}`
  | 'prompt_blocked'
  | `status:${number}`
  | 'hang'
  | 'drop'
  | 'drop_before_headers'
  | 'corrupt'
  | FakeStatusBehavior;

/** An HTTP error answer with chosen retry hints. */
export interface FakeStatusBehavior {
  readonly status: number;
  /** `RetryInfo.retryDelay` (e.g. `'1.5s'`); `null` leaves RetryInfo out. Default `'2s'` for 429. */
  readonly retryDelay?: string | null;
  /** `Retry-After` header; `null` leaves it out. Default `'2'` for 429. */
  readonly retryAfter?: string | null;
  /**
   * The error's `message`. `{key}` is replaced by the API key the client sent: a server
   * that echoes credentials back (tests of key masking; only accepted keys get this far,
   * so it is the server's key). Default: a short fixed text.
   */
  readonly message?: string;
  /**
   * A `google.rpc.QuotaFailure` detail with these violations (before the RetryInfo), as
   * the real API sends for a quota: see {@link DAILY_QUOTA_429}. Default: none.
   */
  readonly quotaViolations?: readonly FakeQuotaViolation[];
}

/** One `google.rpc.QuotaFailure` violation, as the Gemini API words it. */
export interface FakeQuotaViolation {
  readonly quotaMetric: string;
  readonly quotaId: string;
  readonly quotaDimensions?: Readonly<Record<string, string>>;
  readonly quotaValue?: string;
}

/**
 * The 429 a key without billing gets for an image model (the real body's shape: the
 * free tier's per-minute and per-day request quotas and its input-token quota, all with
 * a limit of 0, and a RetryInfo that asks for a short wait that will not help).
 */
export const DAILY_QUOTA_429: FakeStatusBehavior = Object.freeze({
  status: 429,
  retryDelay: '34s',
  retryAfter: null,
  message:
    'You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.\n' +
    '* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-flash-image\nPlease retry in 34.2s.',
  quotaViolations: Object.freeze([
    {
      quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_input_token_count',
      quotaId: 'GenerateContentInputTokensPerModelPerMinute-FreeTier',
      quotaDimensions: { location: 'global', model: 'gemini-2.5-flash-image' },
    },
    {
      quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests',
      quotaId: 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier',
      quotaDimensions: { location: 'global', model: 'gemini-2.5-flash-image' },
    },
    {
      quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests',
      quotaId: 'GenerateRequestsPerDayPerProjectPerModel-FreeTier',
      quotaDimensions: { location: 'global', model: 'gemini-2.5-flash-image' },
    },
  ]),
});

/** What a behavior function is told about the call it decides. */
export interface FakeCall {
  /** 1-based call number (counts every request the server accepted, including 401/403). */
  readonly n: number;
  /** The parsed JSON request body. */
  readonly body: unknown;
  /** Calls in flight, this one included. */
  readonly inFlight: number;
}

/** Decides the behavior of each call. */
export type FakeBehaviorFn = (call: FakeCall) => FakeBehavior;

/** How a recorded call ended. */
export type FakeCallOutcome = 'pending' | 'answered' | 'client_closed' | 'dropped' | 'closed_by_server';

/** What the server recorded about one call (never the image bytes). */
export interface FakeCallRecord {
  readonly n: number;
  readonly model: string;
  readonly apiKeyOk: boolean;
  readonly prompt: string | undefined;
  readonly aspectRatio: string | undefined;
  /** `generationConfig.imageConfig.imageSize`, when the client sent one. */
  readonly imageSize: string | undefined;
  /** Size of the request body as sent, bytes (Gemini's inline request limit is 20 MB). */
  readonly requestBytes: number;
  readonly responseModalities: readonly string[] | undefined;
  /** Inline images sent by the client: mime type and decoded size only. */
  readonly inputImages: readonly { readonly mimeType: string; readonly byteSize: number }[];
  /** The behavior used (as a string, e.g. `'image'`, `'status:429'`). */
  behavior: string;
  /** Stamp of the image served as the answer (the call number), when one was served. */
  servedStamp: number | undefined;
  outcome: FakeCallOutcome;
  /** `performance.now()` of the server when the request's body had arrived (the call started). */
  readonly arrivedAt: number;
  /**
   * `performance.now()` when the server began its answer (after the latency and the gate):
   * the client cannot have it before then, so `[arrivedAt, answeredAt)` lies inside the
   * time the client counts the call in flight. Undefined while unanswered.
   */
  answeredAt: number | undefined;
  /** `performance.now()` when the call stopped counting as in flight here; undefined while pending. */
  settledAt: number | undefined;
}

/** Options of {@link startFakeGeminiServer}. */
export interface FakeGeminiServerOptions extends FakeBatchOptions {
  /** The key clients must send (`x-goog-api-key`). Default `'test-key'`. Missing key: 401, wrong key: 403. */
  readonly apiKey?: string;
  /** Delay before every answer, ms, or a function of the call. Default 0. */
  readonly latencyMs?: number | ((call: FakeCall) => number);
  /** Extra delay drawn from 0..jitterMs, a pure function of (`seed`, call number). Default 0. */
  readonly jitterMs?: number;
  /** Seed of the latency jitter. Default 0. */
  readonly seed?: number;
  /** Decides each call. Default: always `'image'`. */
  readonly behavior?: FakeBehaviorFn;
  /**
   * Above this many calls in flight, answer 429 with RetryInfo (`rateLimitRetryDelay`), at
   * once (no latency, no hold; the refused call leaves the in-flight count). The peak counts
   * the refused call's arrival. Default: unlimited.
   */
  readonly maxInFlight?: number;
  /** `retryDelay` of the 429s caused by `maxInFlight`. Default `'1s'`. */
  readonly rateLimitRetryDelay?: string;
  /** Long side of served images, px. Default 64 (the short side follows the requested aspect ratio). */
  readonly imageSize?: number;
  /**
   * A gate: awaited after the latency and before the answer, so a test can hold calls
   * until it has done something (killed a client, seen another call arrive). Default: none.
   */
  readonly hold?: (call: FakeCall) => Promise<void> | void;
  /**
   * The `usageMetadata` of every 200 answer (images, blocks, imageless answers), e.g. with a
   * `thoughtsTokenCount`; `undefined` for a call keeps the default ({@link FAKE_USAGE} for
   * answers with content, prompt tokens only for blocks). Default: the defaults.
   */
  readonly usageMetadata?: (call: FakeCallRecord) => FakeUsageMetadata | undefined;
}

/** A `usageMetadata` as the API sends it (the counts the pipeline reads). */
export interface FakeUsageMetadata {
  readonly promptTokenCount?: number;
  readonly candidatesTokenCount?: number;
  readonly totalTokenCount?: number;
  readonly thoughtsTokenCount?: number;
}

/** Per answer: the `usageMetadata` that replaces the default one (`FakeGeminiServerOptions.usageMetadata`). */
const usageOverrides = new WeakMap<ServerResponse, FakeUsageMetadata>();

/** A running fake Gemini server. */
export interface FakeGeminiServer {
  /** Base URL to pass as the SDK's `httpOptions.baseUrl`, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** The API key the server accepts. */
  readonly apiKey: string;
  /** Number of calls received so far. */
  calls(): number;
  /** Calls in flight now: arrived, and not yet answered (the answer begun) or ended. */
  inFlight(): number;
  /** Highest number of calls that were in flight at once (as {@link inFlight} counts). */
  maxObservedInFlight(): number;
  /** Records of every call, in arrival order. */
  readonly requests: readonly FakeCallRecord[];
  /** Replaces the behavior function for the following calls. */
  setBehavior(behavior: FakeBehaviorFn): void;
  /** Replaces the gate ({@link FakeGeminiServerOptions.hold}) for the following calls; `undefined` removes it. */
  setHold(hold: ((call: FakeCall) => Promise<void> | void) | undefined): void;
  /** Resolves with the record of call `n` once it has arrived (an event to wait for instead of a time). */
  received(n: number): Promise<FakeCallRecord>;
  /** Resolves with the record of call `n` once it is no longer pending (answered, dropped, closed). */
  settled(n: number): Promise<FakeCallRecord>;
  /** Stops listening and destroys every open socket (hanging calls included). */
  close(): Promise<void>;
  /** Records of every batch created (batch mode), in creation order. Batch calls are not counted by {@link calls}. */
  readonly batches: readonly FakeBatchRecord[];
  /** The batch calls received so far, by kind. */
  batchCalls(): Readonly<FakeBatchCallCounts>;
  /** Replaces the per-request behavior of batches created from now on. */
  setBatchBehavior(behavior: ((item: FakeBatchItem) => FakeBatchItemBehavior) | undefined): void;
  /** Replaces the plan of batches created from now on. */
  setBatchPlan(plan: FakeBatchOptions['batchPlan']): void;
  /** Replaces the behavior of the following batch create calls. */
  setBatchCreateBehavior(behavior: FakeBatchOptions['batchCreateBehavior']): void;
  /** Files API: every file the server holds (uploads once finalized, and batches' responses files), in creation order. */
  readonly files: readonly FakeFileRecord[];
  /** Files API: the calls received so far, by kind. Not counted by {@link calls} nor {@link batchCalls}. */
  fileCalls(): Readonly<FakeFileCallCounts>;
  /** Files API: the bytes of a file (`files/<id>`), as uploaded or as written for a batch; undefined when there is none. */
  fileContent(name: string): Buffer | undefined;
}

/** Stamp of the thought image in the `thought_image` behavior (never a call number in practice). */
export const THOUGHT_STAMP = MAX_STAMP;

/** Token counts the fake reports in `usageMetadata` for an image answer. */
export const FAKE_USAGE = Object.freeze({ promptTokenCount: 12, candidatesTokenCount: 1290, totalTokenCount: 1302 });

const STATUS_NAMES: Readonly<Record<number, string>> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  429: 'RESOURCE_EXHAUSTED',
  500: 'INTERNAL',
  503: 'UNAVAILABLE',
  504: 'DEADLINE_EXCEEDED',
};

const PATH = /^\/v1beta\/models\/([^/:]+):generateContent(?:\?.*)?$/;

/**
 * Starts a real `node:http` server on 127.0.0.1 (random port) that speaks the part of
 * the Gemini API the pipeline uses: `POST /v1beta/models/{model}:generateContent`.
 *
 * Every served image is unique: its pixels carry the call number (see
 * `readStamp` in `stamped-image.ts`), and the record of the call keeps it as
 * `servedStamp`. `close()` destroys hanging sockets so tests do not leak.
 *
 * @example
 * const server = await startFakeGeminiServer({ behavior: ({ n }) => (n === 1 ? 'status:503' : 'image') });
 * const ai = new GoogleGenAI({ apiKey: server.apiKey, apiVersion: 'v1beta', httpOptions: { baseUrl: server.url } });
 * // ...
 * await server.close();
 */
export async function startFakeGeminiServer(options: FakeGeminiServerOptions = {}): Promise<FakeGeminiServer> {
  const apiKey = options.apiKey ?? 'test-key';
  const latency = options.latencyMs ?? 0;
  const latencyOf = typeof latency === 'function' ? latency : () => latency;
  const jitterMs = options.jitterMs ?? 0;
  const seed = options.seed ?? 0;
  const imageSize = options.imageSize ?? 64;
  const maxInFlight = options.maxInFlight ?? Number.POSITIVE_INFINITY;
  const rateLimitRetryDelay = options.rateLimitRetryDelay ?? '1s';
  let behavior: FakeBehaviorFn = options.behavior ?? (() => 'image');
  let hold = options.hold;
  const arrivals = new Map<number, ((record: FakeCallRecord) => void)[]>();
  let calls = 0;
  let inFlight = 0;
  let maxObserved = 0;
  const records: FakeCallRecord[] = [];
  const waiters = new Map<number, ((record: FakeCallRecord) => void)[]>();
  const timers = new Set<NodeJS.Timeout>();
  const batches = fakeBatches(
    {
      batchBehavior: options.batchBehavior,
      batchPlan: options.batchPlan,
      batchCreateBehavior: options.batchCreateBehavior,
      batchListPageSize: options.batchListPageSize,
      fileUploadBehavior: options.fileUploadBehavior,
      fileDownloadBehavior: options.fileDownloadBehavior,
    },
    apiKey,
    async (stamp, aspectRatio) => {
      const ratio = (ASPECT_RATIOS as readonly string[]).includes(aspectRatio ?? '') ? (aspectRatio as AspectRatio) : '1:1';
      const { width, height } = dimensionsForAspectRatio(ratio, imageSize);
      return { inlineData: { mimeType: 'image/png', data: Buffer.from(await renderStampedPng({ stamp, width: Math.max(width, 24), height: Math.max(height, 4) })).toString('base64') } };
    },
  );

  // A call counts as in flight from its arrival until the server starts its answer (or the
  // call ends unanswered): what a provider counts. Counting until the response's 'close'
  // event instead made a server whose event loop was busy (a loaded machine) see a call the
  // client had already finished and replaced: one more in flight than the client ever had.
  const counted = new WeakSet<FakeCallRecord>();
  const leave = (record: FakeCallRecord): void => {
    if (counted.delete(record)) inFlight--;
  };
  const settle = (record: FakeCallRecord, outcome: FakeCallOutcome): void => {
    if (record.outcome !== 'pending') return;
    record.outcome = outcome;
    record.settledAt = performance.now();
    leave(record);
    for (const resolve of waiters.get(record.n) ?? []) resolve(record);
    waiters.delete(record.n);
  };

  const server = createServer((req, res) => {
    void handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) {
        sendJson(res, 500, { error: { code: 500, message: `fake server bug: ${String(error)}`, status: 'INTERNAL' } });
      } else {
        res.destroy();
      }
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const batchKey = headerValue(req.headers['x-goog-api-key']) ?? new URL(req.url ?? '/', 'http://x').searchParams.get('key') ?? undefined;
    if (await batches.handle(req, res, batchKey)) return;
    const match = req.method === 'POST' ? PATH.exec(req.url ?? '') : null;
    if (!match) {
      sendJson(res, 404, { error: { code: 404, message: `no route ${req.method} ${req.url}`, status: 'NOT_FOUND' } });
      return;
    }
    const raw = await readBody(req);
    const n = ++calls;
    inFlight++;
    maxObserved = Math.max(maxObserved, inFlight);
    const body = parseJson(raw);
    const sentKey = headerValue(req.headers['x-goog-api-key']) ?? new URL(req.url ?? '/', 'http://x').searchParams.get('key') ?? undefined;
    const record: FakeCallRecord = {
      n,
      model: decodeURIComponent(match[1] ?? ''),
      apiKeyOk: sentKey === apiKey,
      ...describeRequest(body),
      requestBytes: Buffer.byteLength(raw),
      behavior: 'pending',
      servedStamp: undefined,
      outcome: 'pending',
      arrivedAt: performance.now(),
      answeredAt: undefined,
      settledAt: undefined,
    };
    records.push(record);
    counted.add(record);
    for (const resolve of arrivals.get(n) ?? []) resolve(record);
    arrivals.delete(n);
    // The client closing its side before we answered: it gave up (abort / timeout).
    res.on('close', () => settle(record, res.writableFinished ? 'answered' : 'client_closed'));

    if (sentKey === undefined) {
      record.behavior = 'status:401';
      sendJson(res, 401, googleError(401, 'Method doesn\'t allow unregistered callers. Please use an API key.'));
      return;
    }
    if (sentKey !== apiKey) {
      record.behavior = 'status:403';
      sendJson(res, 403, googleError(403, 'API key not valid. Please pass a valid API key.'));
      return;
    }

    if (inFlight > maxInFlight) {
      // Refused at the door, as a provider's quota check is: answered at once, and no longer
      // counted in flight (no latency, no hold). A refusal held for the call's latency kept a
      // provider slot busy with nothing, so every call arriving meanwhile was refused too.
      record.behavior = 'status:429';
      record.answeredAt = performance.now();
      leave(record);
      await answer({ status: 429, retryDelay: rateLimitRetryDelay, retryAfter: null }, record, res);
      return;
    }
    const chosen = behavior({ n, body, inFlight });
    record.behavior = typeof chosen === 'string' ? chosen : `status:${chosen.status}`;

    const latencyMs = latencyOf({ n, body, inFlight }) + Math.floor(unitHash(seed, n, 3) * jitterMs);
    if (latencyMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          timers.delete(t);
          resolve();
        }, latencyMs);
        timers.add(t);
      });
      if (res.destroyed) return;
    }
    const gate = hold?.({ n, body, inFlight });
    if (gate) {
      await gate;
      if (res.destroyed) return;
    }
    record.answeredAt = performance.now();
    leave(record);
    await answer(chosen, record, res);
  }

  async function answer(chosen: FakeBehavior, record: FakeCallRecord, res: ServerResponse): Promise<void> {
    const usage = options.usageMetadata?.(record);
    if (usage !== undefined) usageOverrides.set(res, usage);
    const ratio = (ASPECT_RATIOS as readonly string[]).includes(record.aspectRatio ?? '') ? (record.aspectRatio as AspectRatio) : '1:1';
    const { width, height } = dimensionsForAspectRatio(ratio, imageSize);
    const size = { width: Math.max(width, 24), height: Math.max(height, 4) };
    const imagePart = async (stamp: number) => ({
      inlineData: { mimeType: 'image/png', data: Buffer.from(await renderStampedPng({ stamp, ...size })).toString('base64') },
    });

    if (typeof chosen === 'object') {
      sendStatus(res, chosen.message === undefined ? chosen : { ...chosen, message: chosen.message.split('{key}').join(apiKey) });
      return;
    }
    if (chosen.startsWith('status:')) {
      sendStatus(res, { status: Number(chosen.slice('status:'.length)) });
      return;
    }
    const content = await contentAnswer(chosen, record.n, imagePart);
    if (content !== undefined) {
      record.servedStamp = content.servedStamp;
      sendJson(res, 200, content.body);
      return;
    }
    switch (chosen) {
      case 'hang':
        // Never answer: the client's timeout or abort, or close(), ends the call.
        return;
      case 'drop': {
        const full = JSON.stringify(okResponse([await imagePart(record.n)]));
        res.writeHead(200, { 'content-type': 'application/json; charset=UTF-8', 'content-length': String(Buffer.byteLength(full)) });
        res.write(full.slice(0, Math.floor(full.length / 2)), () => {
          settle(record, 'dropped');
          res.destroy();
        });
        return;
      }
      case 'drop_before_headers':
        settle(record, 'dropped');
        res.socket?.destroy();
        return;
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;

  return {
    url: `http://127.0.0.1:${port}`,
    apiKey,
    calls: () => calls,
    inFlight: () => inFlight,
    maxObservedInFlight: () => maxObserved,
    requests: records,
    setBehavior(next) {
      behavior = next;
    },
    setHold(next) {
      hold = next;
    },
    received(n) {
      const record = records.find((r) => r.n === n);
      if (record) return Promise.resolve(record);
      return new Promise((resolve) => {
        const list = arrivals.get(n) ?? [];
        list.push(resolve);
        arrivals.set(n, list);
      });
    },
    settled(n) {
      const record = records.find((r) => r.n === n);
      if (record && record.outcome !== 'pending') return Promise.resolve(record);
      return new Promise((resolve) => {
        const list = waiters.get(n) ?? [];
        list.push(resolve);
        waiters.set(n, list);
      });
    },
    batches: batches.records,
    batchCalls: () => ({ ...batches.counts }),
    setBatchBehavior(next) {
      batches.options = { ...batches.options, batchBehavior: next };
    },
    setBatchPlan(next) {
      batches.options = { ...batches.options, batchPlan: next };
    },
    setBatchCreateBehavior(next) {
      batches.options = { ...batches.options, batchCreateBehavior: next };
    },
    files: batches.files,
    fileCalls: () => ({ ...batches.fileCounts }),
    fileContent: (name) => batches.fileContent(name),
    close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      for (const record of records) if (record.outcome === 'pending') settle(record, 'closed_by_server');
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    },
  };
}

/** Options of {@link randomMixBehavior}. */
export interface RandomMixOptions {
  /** Seed of the mix; the same seed gives the same behavior for the same call number. */
  readonly seed: number;
  /** Fraction of calls that fail, 0..1. */
  readonly failureRate: number;
  /** Behaviors failures are drawn from (uniformly). Default: 429, 503, 500, `no_image`-style answers. */
  readonly classes?: readonly FakeBehavior[];
  /** Behavior of the calls that do not fail. Default `'image'`. */
  readonly success?: FakeBehavior;
}

/**
 * A behavior function that fails a seeded, reproducible fraction of calls.
 * The decision depends only on `(seed, call number)`, not on timing or order.
 *
 * @example
 * startFakeGeminiServer({ behavior: randomMixBehavior({ seed: 7, failureRate: 0.2, classes: ['status:503', 'text_only'] }) })
 */
export function randomMixBehavior(options: RandomMixOptions): FakeBehaviorFn {
  const classes = options.classes ?? (['status:429', 'status:503', 'status:500', 'text_only', 'finish:IMAGE_SAFETY'] as const);
  const success = options.success ?? 'image';
  if (classes.length === 0) throw new RangeError('randomMixBehavior needs at least one failure class');
  return ({ n }) => {
    const r = unitHash(options.seed, n, 1);
    if (r >= options.failureRate) return success;
    const pick = Math.floor(unitHash(options.seed, n, 2) * classes.length);
    return classes[Math.min(pick, classes.length - 1)] ?? success;
  };
}

/** A deterministic number in [0, 1) from integers (a small integer hash, not crypto). */
function unitHash(...values: number[]): number {
  let h = 0x811c9dc5;
  for (const v of values) {
    h = Math.imul(h ^ (v | 0), 0x01000193);
    h ^= h >>> 15;
    h = Math.imul(h, 0x2c1b3c6d);
    h ^= h >>> 12;
  }
  h = Math.imul(h ^ (h >>> 16), 0x297a2d39);
  h ^= h >>> 15;
  return (h >>> 0) / 2 ** 32;
}

/**
 * The 200 answer (a `GenerateContentResponse`) of a behavior that answers with content,
 * and the stamp of the image it serves; `undefined` for the others (errors, hangs, drops).
 * Shared by interactive calls and batch responses, so both answer alike.
 */
async function contentAnswer(
  chosen: string,
  stamp: number,
  imagePart: (stamp: number) => Promise<{ inlineData: { mimeType: string; data: string } }>,
): Promise<{ readonly body: unknown; readonly servedStamp: number | undefined } | undefined> {
  if (chosen.startsWith('finish:')) {
    return {
      body: {
        candidates: [{ content: { role: 'model', parts: [] }, finishReason: chosen.slice('finish:'.length), index: 0 }],
        usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
      },
      servedStamp: undefined,
    };
  }
  switch (chosen) {
    case 'image':
      return { body: okResponse([await imagePart(stamp)]), servedStamp: stamp };
    case 'thought_image': {
      const thought = await imagePart(THOUGHT_STAMP);
      const final = await imagePart(stamp);
      return {
        body: okResponse([{ text: 'Sketching a first composition.', thought: true }, { ...thought, thought: true }, { text: 'Here is the image.' }, final]),
        servedStamp: stamp,
      };
    }
    case 'text_only':
      return { body: okResponse([{ text: 'I cannot draw that, but here is a description.' }], 'STOP'), servedStamp: undefined };
    case 'no_parts':
      return { body: { candidates: [{ content: { role: 'model' }, finishReason: 'STOP', index: 0 }], usageMetadata: FAKE_USAGE }, servedStamp: undefined };
    case 'no_candidates':
      return { body: { candidates: [], usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 } }, servedStamp: undefined };
    case 'prompt_blocked':
      return {
        body: {
          promptFeedback: { blockReason: 'PROHIBITED_CONTENT', blockReasonMessage: 'The prompt was blocked.' },
          usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
        },
        servedStamp: undefined,
      };
    case 'corrupt':
      return {
        body: okResponse([{ inlineData: { mimeType: 'image/png', data: Buffer.from('definitely not a png, just words').toString('base64') } }]),
        servedStamp: undefined,
      };
    default:
      return undefined;
  }
}

function okResponse(parts: unknown[], finishReason = 'STOP'): unknown {
  return {
    candidates: [{ content: { role: 'model', parts }, finishReason, index: 0 }],
    usageMetadata: FAKE_USAGE,
    modelVersion: 'fake-gemini',
  };
}

function googleError(code: number, message: string, details?: unknown[]): unknown {
  return { error: { code, message, status: STATUS_NAMES[code] ?? 'UNKNOWN', ...(details ? { details } : {}) } };
}

function sendStatus(res: ServerResponse, behavior: FakeStatusBehavior): void {
  const { status } = behavior;
  const is429 = status === 429;
  const retryDelay = behavior.retryDelay === undefined ? (is429 ? '2s' : null) : behavior.retryDelay;
  const retryAfter = behavior.retryAfter === undefined ? (is429 ? '2' : null) : behavior.retryAfter;
  const quota = behavior.quotaViolations === undefined ? [] : [{ '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations: behavior.quotaViolations }];
  const retry = retryDelay === null ? [] : [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay }];
  const details = quota.length + retry.length === 0 ? undefined : [...quota, ...retry];
  const message = behavior.message ?? (is429 ? 'Resource has been exhausted (e.g. check quota).' : `fake error ${status}`);
  sendJson(res, status, googleError(status, message, details), retryAfter === null ? {} : { 'retry-after': retryAfter });
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const usage = status === 200 ? usageOverrides.get(res) : undefined;
  const text = JSON.stringify(usage !== undefined && typeof body === 'object' && body !== null ? { ...body, usageMetadata: usage } : body);
  res.writeHead(status, { 'content-type': 'application/json; charset=UTF-8', 'content-length': String(Buffer.byteLength(text)), ...headers });
  res.end(text);
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function readBodyBytes(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

function headerValue(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** The interesting fields of a generateContent body, without image bytes. */
function describeRequest(body: unknown): Pick<FakeCallRecord, 'prompt' | 'aspectRatio' | 'imageSize' | 'responseModalities' | 'inputImages'> {
  // The body is client-controlled JSON; read it defensively through `unknown`.
  const b = (body ?? {}) as {
    contents?: { parts?: { text?: string; inlineData?: { mimeType?: string; data?: string } }[] }[];
    generationConfig?: { responseModalities?: string[]; imageConfig?: { aspectRatio?: string; imageSize?: string } };
  };
  const parts = (b.contents ?? []).flatMap((c) => c.parts ?? []);
  const texts = parts.map((p) => p.text).filter((t): t is string => typeof t === 'string');
  return {
    prompt: texts.length > 0 ? texts.join('\n') : undefined,
    aspectRatio: b.generationConfig?.imageConfig?.aspectRatio,
    imageSize: b.generationConfig?.imageConfig?.imageSize,
    responseModalities: b.generationConfig?.responseModalities,
    inputImages: parts
      .filter((p) => p.inlineData !== undefined)
      .map((p) => ({ mimeType: p.inlineData?.mimeType ?? '', byteSize: Buffer.from(p.inlineData?.data ?? '', 'base64').byteLength })),
  };
}

// ---------------------------------------------------------------------------------------
// Batch mode (issue 17): the Gemini Developer API's batch endpoints, as @google/genai 2.32
// calls them (`ai.batches.create/get/cancel/list/delete`, mldev, v1beta), and the Files API
// a batch above the inline limit goes through (`ai.files.upload`'s resumable upload, a
// file's metadata, its download): a batch created from a JSONL file answers its responses
// as a JSONL file (`output.responsesFile`) instead of inline.
// ---------------------------------------------------------------------------------------

/**
 * What the fake does with one request inside a batch: any {@link FakeBehavior} that answers
 * with content (`image`, `thought_image`, `text_only`, `finish:<REASON>`, `prompt_blocked`,
 * `corrupt`, ...) becomes the request's `response`; `status:<code>` (or the object form)
 * becomes its `error` (a `google.rpc.Status`: gRPC code, message, RetryInfo for 429);
 * `missing` (and `hang`, `drop`, `drop_before_headers`, which mean nothing inside a batch)
 * leaves the request without any entry in the output.
 */
export type FakeBatchItemBehavior = FakeBehavior | 'missing';

/** What a batch behavior function is told about one request of a batch (a {@link FakeCall}, so `randomMixBehavior` fits). */
export interface FakeBatchItem extends FakeCall {
  /** 1-based batch number. */
  readonly batch: number;
  /** 0-based position of the request in its batch. */
  readonly index: number;
  /** The request's `metadata.key`, when the client sent one. */
  readonly key: string | undefined;
}

/** How a batch goes, decided when it is created. Every state change happens on a GET of the batch. */
export interface FakeBatchPlan {
  /** How the batch ends. Default `'succeeded'`. */
  readonly outcome?: 'succeeded' | 'failed' | 'expired';
  /** GETs answered `BATCH_STATE_PENDING` first. Default 0. */
  readonly pendingGets?: number;
  /** GETs answered `BATCH_STATE_RUNNING` after those. Default 1 (the second GET sees the end). */
  readonly runningGets?: number;
  /** While this has not settled the batch stays RUNNING, whatever the counts say (a slow batch, a `Gate`). */
  readonly hold?: PromiseLike<unknown>;
  /** The reason a failed or expired batch reports (`Operation.error.message`). */
  readonly reason?: string;
}

/** The server's states of a batch (the wire's `BATCH_STATE_*`). */
export type FakeBatchState = 'BATCH_STATE_PENDING' | 'BATCH_STATE_RUNNING' | 'BATCH_STATE_SUCCEEDED' | 'BATCH_STATE_FAILED' | 'BATCH_STATE_CANCELLED' | 'BATCH_STATE_EXPIRED';

/** What the server recorded about one request of a batch (never image bytes). */
export interface FakeBatchRequestRecord extends Pick<FakeCallRecord, 'prompt' | 'aspectRatio' | 'imageSize' | 'responseModalities' | 'inputImages'> {
  /** 1-based number across every batch request the server got. */
  readonly n: number;
  readonly index: number;
  /** `metadata.key` as sent. */
  readonly key: string | undefined;
  /** The whole `metadata` object as sent. */
  readonly metadata: unknown;
  /** The behavior used (as a string, e.g. `'image'`, `'status:429'`, `'missing'`). */
  readonly behavior: string;
  /** Stamp of the image served ({@link BATCH_STAMP_BASE} + `n`), once the batch succeeded with an image for it. */
  servedStamp: number | undefined;
}

/** What the server recorded about one batch. */
export interface FakeBatchRecord {
  /** 1-based batch number. */
  readonly seq: number;
  /** `batches/<id>`. */
  readonly name: string;
  readonly displayName: string | undefined;
  /** `models/<model>` from the path. */
  readonly model: string;
  /** Size of the create request's body, bytes (the Batch API takes up to 20 MB inline). */
  readonly requestBytes: number;
  readonly requests: readonly FakeBatchRequestRecord[];
  state: FakeBatchState;
  /** GETs of this batch so far. */
  gets: number;
  /** Whether the create call's answer was lost on purpose (`batchCreateBehavior`). */
  readonly answerLost: boolean;
  /** Where the requests came from: inline in the create body, or a JSONL file of the Files API (`inputConfig.fileName`). */
  readonly source: 'inline' | 'file';
  /** The input file (`files/<id>`) of a batch created from a file. */
  readonly inputFile: string | undefined;
  /** The responses file (`files/<id>`) of a file batch, once it succeeded. */
  responsesFile: string | undefined;
}

/** What the server recorded about one file of its Files API (never the bytes: see `fileContent`). */
export interface FakeFileRecord {
  /** `files/<id>`. */
  readonly name: string;
  readonly displayName: string | undefined;
  /** The mime type the client declared (`X-Goog-Upload-Header-Content-Type`), or the one the server wrote. */
  readonly mimeType: string;
  /** Size, bytes. */
  readonly sizeBytes: number;
  /** `upload`: uploaded by a client (resumable protocol); `batch_output`: a batch's responses file. */
  readonly source: 'upload' | 'batch_output';
  /** Upload requests (`upload` / `upload, finalize`) that carried its bytes (0 for a responses file). */
  readonly chunks: number;
  /** Downloads of it so far. */
  downloads: number;
}

/** The Files API calls the server answered, by kind (every call, refused ones too). */
export interface FakeFileCallCounts {
  /** `POST /upload/v1beta/files` with `X-Goog-Upload-Command: start`. */
  uploadStart: number;
  /** `POST` to an upload URL (`upload`, `upload, finalize`). */
  upload: number;
  /** `GET /v1beta/files/<id>`. */
  get: number;
  /** `GET /download/v1beta/files/<id>:download?alt=media` (or without `/download`, as `ai.files.download` sends). */
  download: number;
}

/** The batch calls the server answered, by kind (every call, refused ones too). */
export interface FakeBatchCallCounts {
  create: number;
  get: number;
  cancel: number;
  list: number;
  delete: number;
}

/** The batch options of {@link startFakeGeminiServer} (`FakeGeminiServerOptions` has them too). */
export interface FakeBatchOptions {
  /** Decides each request of each batch, at create time. Default: always `'image'`. */
  readonly batchBehavior?: (item: FakeBatchItem) => FakeBatchItemBehavior;
  /** Decides how each batch goes. Default: succeeds on the second GET. */
  readonly batchPlan?: (batch: { readonly seq: number; readonly displayName: string | undefined; readonly requestCount: number }) => FakeBatchPlan;
  /**
   * Decides each create call (1-based). `status:<code>` (or the object form): the error,
   * nothing created. `drop` / `drop_before_headers`: the batch is created and the answer is
   * lost (the socket is destroyed). `hang`: created, never answered. Anything else: answered.
   * Default: answered.
   */
  readonly batchCreateBehavior?: (n: number) => FakeBehavior;
  /** Batches per page of `GET /v1beta/batches` when the client names no `pageSize`. Default 10. */
  readonly batchListPageSize?: number;
  /**
   * Decides each upload start call of the Files API (1-based). `status:<code>` (or the
   * object form): the error, no upload. `drop` / `drop_before_headers`: the socket is
   * destroyed. `hang`: never answered. Anything else: answered. Default: answered.
   */
  readonly fileUploadBehavior?: (n: number) => FakeBehavior;
  /**
   * Decides each download call of the Files API (1-based). `status:<code>` (or the object
   * form): the error. `drop`: the headers and half the bytes, then the socket is destroyed.
   * `drop_before_headers`: destroyed at once. `hang`: never answered. Anything else: the
   * file. Default: the file.
   */
  readonly fileDownloadBehavior?: (n: number) => FakeBehavior;
}

/** Stamps of batch images start above this (interactive calls stamp their call number). */
export const BATCH_STAMP_BASE = 1_000_000;

/** HTTP status -> the `google.rpc.Code` a batch's per-request `error` carries. */
const GRPC_CODE_OF_HTTP: Readonly<Record<number, number>> = { 400: 3, 401: 16, 403: 7, 404: 5, 409: 10, 429: 8, 499: 1, 500: 13, 501: 12, 503: 14, 504: 4 };

const BATCH_CREATE_PATH = /^\/v1beta\/models\/([^/:?]+):batchGenerateContent(?:\?.*)?$/;
const BATCH_PATH = /^\/v1beta\/batches\/([^/:?]+)(:cancel)?(?:\?.*)?$/;
const BATCH_LIST_PATH = /^\/v1beta\/batches(?:\?.*)?$/;
const UPLOAD_PATH = /^\/upload\/v1beta\/files(?:\?.*)?$/;
const FILE_GET_PATH = /^\/v1beta\/files\/([^/:?]+)(?:\?.*)?$/;
// The Batch API guide downloads from `/download/v1beta/...`; `ai.files.download` sends `/v1beta/...`: both are served.
const FILE_DOWNLOAD_PATH = /^\/(?:download\/)?v1beta\/files\/([^/:?]+):download(?:\?.*)?$/;
const OPERATION_TYPE = 'type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch';
const OUTPUT_TYPE = 'type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput';

interface FakeBatch {
  readonly record: FakeBatchRecord;
  readonly plan: FakeBatchPlan;
  readonly items: readonly { readonly record: FakeBatchRequestRecord; readonly chosen: FakeBatchItemBehavior }[];
  readonly createTime: string;
  updateTime: string;
  endTime: string | undefined;
  held: boolean;
  /** The inlined responses, built once when the batch succeeds. */
  output: unknown[] | undefined;
  /** The responses file of a file batch, written once when it succeeds. */
  responsesFile: string | undefined;
}

/** A file of the fake Files API. */
interface FakeFile {
  readonly record: FakeFileRecord;
  readonly content: Buffer;
  readonly createTime: string;
}

/** A resumable upload started and not yet finalized. */
interface FakeUploadSession {
  readonly displayName: string | undefined;
  readonly mimeType: string;
  readonly declaredBytes: number | undefined;
  readonly parts: Buffer[];
  received: number;
  chunks: number;
}

/** The batch side of the server: its routes and records. */
interface FakeBatches {
  /** Answers the call if it is a batch route; false when it is not one. */
  handle(req: IncomingMessage, res: ServerResponse, sentKey: string | undefined): Promise<boolean>;
  readonly records: FakeBatchRecord[];
  readonly counts: FakeBatchCallCounts;
  options: FakeBatchOptions;
  readonly files: FakeFileRecord[];
  readonly fileCounts: FakeFileCallCounts;
  fileContent(name: string): Buffer | undefined;
}

function fakeBatches(
  options: FakeBatchOptions,
  apiKey: string,
  imagePart: (stamp: number, aspectRatio: string | undefined) => Promise<{ inlineData: { mimeType: string; data: string } }>,
): FakeBatches {
  const batches: FakeBatch[] = [];
  const records: FakeBatchRecord[] = [];
  const counts: FakeBatchCallCounts = { create: 0, get: 0, cancel: 0, list: 0, delete: 0 };
  let requestSeq = 0;
  const files = new Map<string, FakeFile>();
  const fileRecords: FakeFileRecord[] = [];
  const fileCounts: FakeFileCallCounts = { uploadStart: 0, upload: 0, get: 0, download: 0 };
  const sessions = new Map<string, FakeUploadSession>();
  let fileSeq = 0;
  const self: FakeBatches = { handle, records, counts, options, files: fileRecords, fileCounts, fileContent: (name) => files.get(name)?.content };

  async function handle(req: IncomingMessage, res: ServerResponse, sentKey: string | undefined): Promise<boolean> {
    if (await handleFiles(req, res, sentKey)) return true;
    const url = req.url ?? '';
    const create = req.method === 'POST' ? BATCH_CREATE_PATH.exec(url) : null;
    const one = BATCH_PATH.exec(url);
    const list = req.method === 'GET' ? BATCH_LIST_PATH.exec(url) : null;
    const kind: keyof FakeBatchCallCounts | undefined = create
      ? 'create'
      : one && req.method === 'POST' && one[2] === ':cancel'
        ? 'cancel'
        : one && req.method === 'GET' && one[2] === undefined
          ? 'get'
          : one && req.method === 'DELETE' && one[2] === undefined
            ? 'delete'
            : list
              ? 'list'
              : undefined;
    if (kind === undefined) return false;
    counts[kind]++;
    const raw = await readBody(req);
    if (refusedKey(res, sentKey, apiKey)) return true;
    if (kind === 'create') {
      await createBatch(decodeURIComponent(create?.[1] ?? ''), raw, res);
      return true;
    }
    if (kind === 'list') {
      listBatches(new URL(url, 'http://x').searchParams, res);
      return true;
    }
    const batch = batches.find((b) => b.record.name === `batches/${one?.[1] ?? ''}`);
    if (batch === undefined) {
      sendJson(res, 404, googleError(404, `Batch not found: batches/${one?.[1] ?? ''}`));
      return true;
    }
    if (kind === 'get') {
      await advance(batch);
      sendJson(res, 200, operationOf(batch, true));
    } else if (kind === 'cancel') {
      if (!isEnded(batch.record.state)) end(batch, 'BATCH_STATE_CANCELLED');
      sendJson(res, 200, {});
    } else {
      batches.splice(batches.indexOf(batch), 1);
      sendJson(res, 200, {});
    }
    return true;
  }

  async function createBatch(model: string, raw: string, res: ServerResponse): Promise<void> {
    const chosenCreate = self.options.batchCreateBehavior?.(counts.create) ?? 'image';
    if (typeof chosenCreate === 'object') {
      sendStatus(res, chosenCreate);
      return;
    }
    if (chosenCreate.startsWith('status:')) {
      sendStatus(res, { status: Number(chosenCreate.slice('status:'.length)) });
      return;
    }
    // The client-controlled body, read defensively through `unknown`.
    const body = (parseJson(raw) ?? {}) as { batch?: { displayName?: string; inputConfig?: { requests?: { requests?: { request?: unknown; metadata?: unknown }[] }; fileName?: string } } };
    const inlined = body.batch?.inputConfig?.requests?.requests;
    const fileName = body.batch?.inputConfig?.fileName;
    let entries: readonly { readonly request?: unknown; readonly metadata?: unknown; readonly key: unknown }[];
    if (Array.isArray(inlined) && inlined.length > 0) {
      entries = inlined.map((entry) => ({ request: entry.request, metadata: entry.metadata, key: (entry.metadata as { key?: unknown } | undefined)?.key }));
    } else if (typeof fileName === 'string') {
      const lines = fileRequests(fileName);
      if (typeof lines === 'string') {
        sendJson(res, lines.startsWith('File not found') ? 404 : 400, googleError(lines.startsWith('File not found') ? 404 : 400, lines));
        return;
      }
      entries = lines;
    } else {
      sendJson(res, 400, googleError(400, '* BatchGenerateContentRequest.batch.input_config: inlined requests or a file name are required'));
      return;
    }
    const seq = records.length + 1;
    const displayName = body.batch?.displayName;
    const behave = self.options.batchBehavior ?? (() => 'image' as const);
    const items = entries.map((entry, index) => {
      const n = ++requestSeq;
      const key = entry.key;
      const keyText = typeof key === 'string' ? key : undefined;
      const chosen = behave({ n, body: entry.request, inFlight: 0, batch: seq, index, key: keyText });
      const record: FakeBatchRequestRecord = {
        n,
        index,
        key: keyText,
        metadata: entry.metadata,
        ...describeRequest(entry.request),
        behavior: typeof chosen === 'string' ? chosen : `status:${chosen.status}`,
        servedStamp: undefined,
      };
      return { record, chosen };
    });
    const lost = chosenCreate === 'drop' || chosenCreate === 'drop_before_headers' || chosenCreate === 'hang';
    const record: FakeBatchRecord = {
      seq,
      name: `batches/fakebatch${seq.toString(36)}x${(seq * 7919).toString(36)}`,
      displayName,
      model: `models/${model}`,
      requestBytes: Buffer.byteLength(raw),
      requests: items.map((i) => i.record),
      state: 'BATCH_STATE_PENDING',
      gets: 0,
      answerLost: lost,
      source: Array.isArray(inlined) && inlined.length > 0 ? 'inline' : 'file',
      inputFile: Array.isArray(inlined) && inlined.length > 0 ? undefined : fileName,
      responsesFile: undefined,
    };
    const now = new Date().toISOString();
    const plan = self.options.batchPlan?.({ seq, displayName, requestCount: items.length }) ?? {};
    const batch: FakeBatch = { record, plan, items, createTime: now, updateTime: now, endTime: undefined, held: plan.hold !== undefined, output: undefined, responsesFile: undefined };
    void plan.hold?.then(() => {
      batch.held = false;
    });
    records.push(record);
    batches.push(batch);
    if (chosenCreate === 'hang') return;
    if (lost) {
      res.socket?.destroy();
      return;
    }
    sendJson(res, 200, operationOf(batch, false));
  }

  function listBatches(query: URLSearchParams, res: ServerResponse): void {
    const pageSize = Number(query.get('pageSize') ?? self.options.batchListPageSize ?? 10);
    const start = Number(query.get('pageToken') ?? '0');
    // Newest first, as the API lists them.
    const newestFirst = [...batches].reverse();
    const page = newestFirst.slice(start, start + pageSize);
    const next = start + pageSize < newestFirst.length ? String(start + pageSize) : undefined;
    // Listed batches carry no output (kept light; results are read with a GET of the batch).
    sendJson(res, 200, { operations: page.map((b) => operationOf(b, false)), ...(next !== undefined ? { nextPageToken: next } : {}) });
  }

  /** One GET's worth of progress: PENDING for `pendingGets`, RUNNING for `runningGets` (and while held), then the outcome. */
  async function advance(batch: FakeBatch): Promise<void> {
    const { record, plan } = batch;
    record.gets++;
    if (isEnded(record.state)) return;
    const pendingGets = plan.pendingGets ?? 0;
    const runningGets = plan.runningGets ?? 1;
    if (record.gets <= pendingGets) return;
    if (batch.held || record.gets <= pendingGets + runningGets) {
      if (record.state !== 'BATCH_STATE_RUNNING') {
        record.state = 'BATCH_STATE_RUNNING';
        batch.updateTime = new Date().toISOString();
      }
      return;
    }
    const outcome = plan.outcome ?? 'succeeded';
    if (outcome === 'succeeded' && batch.record.source === 'file') {
      batch.responsesFile = await writeResponsesFile(batch);
      batch.record.responsesFile = batch.responsesFile;
    } else if (outcome === 'succeeded') {
      batch.output = await inlinedResponses(batch);
    }
    end(batch, outcome === 'succeeded' ? 'BATCH_STATE_SUCCEEDED' : outcome === 'failed' ? 'BATCH_STATE_FAILED' : 'BATCH_STATE_EXPIRED');
  }

  function end(batch: FakeBatch, state: FakeBatchState): void {
    batch.record.state = state;
    batch.updateTime = new Date().toISOString();
    batch.endTime = batch.updateTime;
  }

  async function inlinedResponses(batch: FakeBatch): Promise<unknown[]> {
    const out: unknown[] = [];
    for (const { record, answer } of await batchAnswers(batch)) {
      const metadata = record.metadata ?? undefined;
      out.push({ ...answer, ...(metadata !== undefined ? { metadata } : {}) });
    }
    return out;
  }

  /** Each request's `{ response }` or `{ error }` (none for `missing`, `hang`, `drop`), stamps recorded. */
  async function batchAnswers(batch: FakeBatch): Promise<{ readonly record: FakeBatchRequestRecord; readonly answer: { response: unknown } | { error: unknown } }[]> {
    const out: { record: FakeBatchRequestRecord; answer: { response: unknown } | { error: unknown } }[] = [];
    for (const { record, chosen } of batch.items) {
      if (typeof chosen === 'object' || chosen.startsWith('status:')) {
        const status = typeof chosen === 'object' ? chosen : { status: Number(chosen.slice('status:'.length)) };
        out.push({ record, answer: { error: rpcStatus(status) } });
        continue;
      }
      const stamp = BATCH_STAMP_BASE + record.n;
      const content = await contentAnswer(chosen, stamp, (s) => imagePart(s, record.aspectRatio));
      if (content === undefined) continue; // missing, hang, drop: no entry
      record.servedStamp = content.servedStamp;
      out.push({ record, answer: { response: content.body } });
    }
    return out;
  }

  /** A succeeded file batch's output: a JSONL file, one `{"key", "response" | "error"}` line per answered request, in request order. */
  async function writeResponsesFile(batch: FakeBatch): Promise<string> {
    const lines = (await batchAnswers(batch)).map(({ record, answer }) => `${JSON.stringify({ ...(record.key !== undefined ? { key: record.key } : {}), ...answer })}\n`);
    const id = batch.record.name.slice('batches/'.length);
    return addFile(`files/batch-${id}`, Buffer.from(lines.join(''), 'utf8'), { displayName: `${batch.record.displayName ?? id} responses`, mimeType: 'application/jsonl', source: 'batch_output', chunks: 0 });
  }

  /** The requests of an uploaded JSONL input file (`{"key", "request"}` per line), or why the create is refused. */
  function fileRequests(fileName: string): { request: unknown; metadata: unknown; key: unknown }[] | string {
    const file = files.get(fileName);
    if (file === undefined) return `File not found: ${fileName}`;
    const out: { request: unknown; metadata: unknown; key: unknown }[] = [];
    const lines = file.content.toString('utf8').split('\n');
    for (const [i, line] of lines.entries()) {
      if (line.trim() === '') continue;
      // Client-written JSON, read defensively.
      const parsed = parseJson(line) as { key?: unknown; request?: unknown; metadata?: unknown } | undefined;
      if (parsed === undefined || parsed === null || typeof parsed !== 'object' || parsed.request === undefined) {
        return `* BatchGenerateContentRequest.batch.input_config.file_name: line ${i + 1} of ${fileName} is not a {"key", "request"} object`;
      }
      out.push({ request: parsed.request, metadata: parsed.metadata, key: parsed.key });
    }
    if (out.length === 0) return `* BatchGenerateContentRequest.batch.input_config.file_name: ${fileName} holds no requests`;
    return out;
  }

  function addFile(name: string, content: Buffer, meta: { readonly displayName: string | undefined; readonly mimeType: string; readonly source: FakeFileRecord['source']; readonly chunks: number }): string {
    const record: FakeFileRecord = { name, displayName: meta.displayName, mimeType: meta.mimeType, sizeBytes: content.byteLength, source: meta.source, chunks: meta.chunks, downloads: 0 };
    files.set(name, { record, content, createTime: new Date().toISOString() });
    fileRecords.push(record);
    return name;
  }

  /** The `File` resource of the Files API (what `upload, finalize` answers in `{ file }` and `GET files/<id>` answers). */
  function fileResource(file: FakeFile, origin: string): unknown {
    const { record } = file;
    const expiration = new Date(Date.parse(file.createTime) + 48 * 3600 * 1000).toISOString();
    return {
      name: record.name,
      ...(record.displayName !== undefined ? { displayName: record.displayName } : {}),
      mimeType: record.mimeType,
      sizeBytes: String(record.sizeBytes),
      createTime: file.createTime,
      updateTime: file.createTime,
      expirationTime: expiration,
      sha256Hash: Buffer.from(createHash('sha256').update(file.content).digest('hex')).toString('base64'),
      uri: `${origin}/v1beta/${record.name}`,
      downloadUri: `${origin}/download/v1beta/${record.name}:download?alt=media`,
      state: 'ACTIVE',
      source: record.source === 'upload' ? 'UPLOADED' : 'GENERATED',
    };
  }

  /**
   * The Files API, as @google/genai 2.32 (`ai.files.upload`, `ai.files.get`,
   * `ai.files.download`) and the Batch API guide call it: a resumable upload (start, then
   * `upload` / `upload, finalize` requests at the upload URL, offsets checked), a file's
   * metadata, and its bytes (`alt=media`). False when the call is not one of these.
   */
  async function handleFiles(req: IncomingMessage, res: ServerResponse, sentKey: string | undefined): Promise<boolean> {
    const url = req.url ?? '';
    const query = new URL(url, 'http://x').searchParams;
    const uploadId = query.get('upload_id');
    const download = req.method === 'GET' ? FILE_DOWNLOAD_PATH.exec(url) : null;
    const get = req.method === 'GET' && download === null ? FILE_GET_PATH.exec(url) : null;
    const kind: keyof FakeFileCallCounts | undefined =
      req.method === 'POST' && UPLOAD_PATH.test(url) ? (uploadId === null ? 'uploadStart' : 'upload') : download ? 'download' : get ? 'get' : undefined;
    if (kind === undefined) return false;
    fileCounts[kind]++;
    const raw = await readBodyBytes(req);
    if (refusedKey(res, sentKey, apiKey)) return true;
    const origin = `http://${req.headers.host ?? '127.0.0.1'}`;
    const command = (headerValue(req.headers['x-goog-upload-command']) ?? '').toLowerCase();
    if (kind === 'uploadStart') {
      const chosen = self.options.fileUploadBehavior?.(fileCounts.uploadStart) ?? 'image';
      if (answeredOtherwise(chosen, res)) return true;
      if ((headerValue(req.headers['x-goog-upload-protocol']) ?? '').toLowerCase() !== 'resumable' || command !== 'start') {
        sendJson(res, 400, googleError(400, 'Upload protocol: resumable uploads start with X-Goog-Upload-Protocol: resumable and X-Goog-Upload-Command: start'));
        return true;
      }
      // Client-controlled JSON, read defensively.
      const body = (parseJson(raw.toString('utf8')) ?? {}) as { file?: { displayName?: unknown; mimeType?: unknown } };
      const declared = headerValue(req.headers['x-goog-upload-header-content-length']);
      const mimeType = headerValue(req.headers['x-goog-upload-header-content-type']) ?? (typeof body.file?.mimeType === 'string' ? body.file.mimeType : 'application/octet-stream');
      const id = `upload${++fileSeq}`;
      sessions.set(id, {
        displayName: typeof body.file?.displayName === 'string' ? body.file.displayName : undefined,
        mimeType,
        declaredBytes: declared === undefined ? undefined : Number(declared),
        parts: [],
        received: 0,
        chunks: 0,
      });
      res.writeHead(200, {
        'x-goog-upload-url': `${origin}/upload/v1beta/files?upload_id=${id}&upload_protocol=resumable`,
        'x-goog-upload-status': 'active',
        'content-length': '0',
      });
      res.end();
      return true;
    }
    if (kind === 'upload') {
      const session = sessions.get(uploadId ?? '');
      if (session === undefined) {
        sendJson(res, 404, googleError(404, `No upload session ${uploadId ?? ''}`));
        return true;
      }
      const offset = Number(headerValue(req.headers['x-goog-upload-offset']) ?? 'NaN');
      if (!command.split(',').map((c) => c.trim()).includes('upload') || offset !== session.received) {
        sendJson(res, 400, googleError(400, `Upload: expected X-Goog-Upload-Command: upload at X-Goog-Upload-Offset ${session.received}`));
        return true;
      }
      session.parts.push(raw);
      session.received += raw.byteLength;
      session.chunks++;
      if (!command.includes('finalize')) {
        res.writeHead(200, { 'x-goog-upload-status': 'active', 'content-length': '0' });
        res.end();
        return true;
      }
      sessions.delete(uploadId ?? '');
      if (session.declaredBytes !== undefined && session.declaredBytes !== session.received) {
        sendJson(res, 400, googleError(400, `Upload: ${session.received} bytes received, ${session.declaredBytes} declared`));
        return true;
      }
      const name = addFile(`files/fakefile${fileSeq.toString(36)}x${(fileSeq * 7907).toString(36)}`, Buffer.concat(session.parts), {
        displayName: session.displayName,
        mimeType: session.mimeType,
        source: 'upload',
        chunks: session.chunks,
      });
      const file = files.get(name);
      sendJson(res, 200, { file: file === undefined ? {} : fileResource(file, origin) }, { 'x-goog-upload-status': 'final' });
      return true;
    }
    const name = `files/${decodeURIComponent((download ?? get)?.[1] ?? '')}`;
    const file = files.get(name);
    if (kind === 'download') {
      const chosen = self.options.fileDownloadBehavior?.(fileCounts.download) ?? 'image';
      if (chosen !== 'drop' && answeredOtherwise(chosen, res)) return true;
      if (file === undefined) {
        sendJson(res, 404, googleError(404, `File not found: ${name}`));
        return true;
      }
      if (query.get('alt') !== 'media') {
        sendJson(res, 400, googleError(400, 'Downloads need alt=media'));
        return true;
      }
      file.record.downloads++;
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(file.content.byteLength) });
      if (chosen === 'drop') {
        res.write(file.content.subarray(0, Math.floor(file.content.byteLength / 2)), () => res.destroy());
        return true;
      }
      res.end(file.content);
      return true;
    }
    if (file === undefined) {
      sendJson(res, 404, googleError(404, `File not found: ${name}`));
      return true;
    }
    sendJson(res, 200, fileResource(file, origin));
    return true;
  }

  /** A Files API behavior that is not a plain answer (an error, a drop, a hang) acted out; false when the call is to be answered. */
  function answeredOtherwise(chosen: FakeBehavior, res: ServerResponse): boolean {
    if (typeof chosen === 'object') {
      sendStatus(res, chosen);
      return true;
    }
    if (chosen.startsWith('status:')) {
      sendStatus(res, { status: Number(chosen.slice('status:'.length)) });
      return true;
    }
    if (chosen === 'drop' || chosen === 'drop_before_headers') {
      res.socket?.destroy();
      return true;
    }
    return chosen === 'hang';
  }

  /** The `Operation` the API answers for a batch (create, get, list). */
  function operationOf(batch: FakeBatch, withOutput: boolean): unknown {
    const { record } = batch;
    const ended = isEnded(record.state);
    const succeeded = batch.items.filter((i) => typeof i.chosen === 'string' && !i.chosen.startsWith('status:') && i.chosen !== 'missing').length;
    const output =
      withOutput && batch.output !== undefined
        ? { inlinedResponses: { inlinedResponses: batch.output } }
        : withOutput && batch.responsesFile !== undefined
          ? { responsesFile: batch.responsesFile }
          : undefined;
    const metadata = {
      '@type': OPERATION_TYPE,
      model: record.model,
      displayName: record.displayName,
      name: record.name,
      createTime: batch.createTime,
      updateTime: batch.updateTime,
      ...(batch.endTime !== undefined ? { endTime: batch.endTime } : {}),
      batchStats: {
        requestCount: String(batch.items.length),
        ...(record.state === 'BATCH_STATE_SUCCEEDED' ? { successfulRequestCount: String(succeeded), failedRequestCount: String(batch.items.length - succeeded) } : { pendingRequestCount: String(batch.items.length) }),
      },
      state: record.state,
      ...(output !== undefined ? { output } : {}),
    };
    const error =
      record.state === 'BATCH_STATE_FAILED'
        ? { code: 13, message: batch.plan.reason ?? 'The batch failed: internal error.' }
        : record.state === 'BATCH_STATE_EXPIRED'
          ? { code: 4, message: batch.plan.reason ?? 'The batch expired: it was not completed within 48 hours.' }
          : record.state === 'BATCH_STATE_CANCELLED'
            ? { code: 1, message: 'The batch was cancelled.' }
            : undefined;
    return {
      name: record.name,
      metadata,
      ...(ended ? { done: true } : {}),
      ...(error !== undefined ? { error } : {}),
      ...(output !== undefined ? { response: { '@type': OUTPUT_TYPE, ...output } } : {}),
    };
  }

  return self;
}

function isEnded(state: FakeBatchState): boolean {
  return state !== 'BATCH_STATE_PENDING' && state !== 'BATCH_STATE_RUNNING';
}

/** A per-request error of a batch: a `google.rpc.Status` (gRPC code), with RetryInfo for a 429 as the API sends. */
function rpcStatus(behavior: FakeStatusBehavior): unknown {
  const is429 = behavior.status === 429;
  const retryDelay = behavior.retryDelay === undefined ? (is429 ? '2s' : null) : behavior.retryDelay;
  const quota = behavior.quotaViolations === undefined ? [] : [{ '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations: behavior.quotaViolations }];
  const retry = retryDelay === null ? [] : [{ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay }];
  const details = [...quota, ...retry];
  return {
    code: GRPC_CODE_OF_HTTP[behavior.status] ?? (behavior.status >= 500 ? 13 : 2),
    message: behavior.message ?? (is429 ? 'Resource has been exhausted (e.g. check quota).' : `fake error ${behavior.status}`),
    ...(details.length > 0 ? { details } : {}),
  };
}

/** Answers 401 (no key) or 403 (a wrong key) as the API does; true when it did. */
function refusedKey(res: ServerResponse, sentKey: string | undefined, apiKey: string): boolean {
  if (sentKey === undefined) {
    sendJson(res, 401, googleError(401, 'Method doesn\'t allow unregistered callers. Please use an API key.'));
    return true;
  }
  if (sentKey !== apiKey) {
    sendJson(res, 403, googleError(403, 'API key not valid. Please pass a valid API key.'));
    return true;
  }
  return false;
}
