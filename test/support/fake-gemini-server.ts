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
export interface FakeGeminiServerOptions {
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
  /** Above this many calls in flight, answer 429 with RetryInfo (`rateLimitRetryDelay`). Default: unlimited. */
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

    let chosen: FakeBehavior;
    if (inFlight > maxInFlight) {
      chosen = { status: 429, retryDelay: rateLimitRetryDelay, retryAfter: null };
    } else {
      chosen = behavior({ n, body, inFlight });
    }
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
    if (chosen.startsWith('finish:')) {
      sendJson(res, 200, {
        candidates: [{ content: { role: 'model', parts: [] }, finishReason: chosen.slice('finish:'.length), index: 0 }],
        usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
      });
      return;
    }
    switch (chosen) {
      case 'image': {
        const part = await imagePart(record.n);
        record.servedStamp = record.n;
        sendJson(res, 200, okResponse([part]));
        return;
      }
      case 'thought_image': {
        const thought = await imagePart(THOUGHT_STAMP);
        const final = await imagePart(record.n);
        record.servedStamp = record.n;
        sendJson(
          res,
          200,
          okResponse([
            { text: 'Sketching a first composition.', thought: true },
            { ...thought, thought: true },
            { text: 'Here is the image.' },
            final,
          ]),
        );
        return;
      }
      case 'text_only':
        sendJson(res, 200, okResponse([{ text: 'I cannot draw that, but here is a description.' }], 'STOP'));
        return;
      case 'no_parts':
        sendJson(res, 200, { candidates: [{ content: { role: 'model' }, finishReason: 'STOP', index: 0 }], usageMetadata: FAKE_USAGE });
        return;
      case 'no_candidates':
        sendJson(res, 200, { candidates: [], usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 } });
        return;
      case 'prompt_blocked':
        sendJson(res, 200, {
          promptFeedback: { blockReason: 'PROHIBITED_CONTENT', blockReasonMessage: 'The prompt was blocked.' },
          usageMetadata: { promptTokenCount: 12, totalTokenCount: 12 },
        });
        return;
      case 'corrupt':
        record.servedStamp = undefined;
        sendJson(
          res,
          200,
          okResponse([{ inlineData: { mimeType: 'image/png', data: Buffer.from('definitely not a png, just words').toString('base64') } }]),
        );
        return;
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
