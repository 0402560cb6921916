import { inspect } from 'node:util';
import { ApiError, GoogleGenAI, type BatchJob, type InlinedRequest, type InlinedResponse } from '@google/genai';
import { asyncScheduler, Observable, type SchedulerLike } from 'rxjs';
import { Agent } from 'undici';
import { PipelineError } from '../domain/error-class.js';
import { DEFAULT_GEMINI_IMAGE_MODEL, imageModelCapabilities, type ImageModelCapabilities } from '../domain/models.js';
import type { BatchGenerator, BatchRequest, BatchResponse, BatchState, BatchStatus, InputImage } from '../domain/ports.js';
import { classifyGeminiError, type GeminiResponseLike } from './classify-gemini-error.js';
import {
  createGenAiClient,
  DEFAULT_GEMINI_TIMEOUT_MS,
  GEMINI_API_BASE_URL,
  genAiOptions,
  imageContentRequest,
  imageFromAnswer,
  sdkModalities,
  type ImageContentRequest,
} from './gemini-image-generator.js';
import { maskSecrets } from './mask-secrets.js';

/**
 * What the Batch API takes inline: 20 MB of requests in the create call ("Inline requests
 * ... keep the total request size under 20MB", the Batch API guide). Measured here as the
 * JSON of the inlined requests, which is what the create body carries. Above it the
 * requests travel as a JSONL file through the Files API.
 */
export const GEMINI_BATCH_INLINE_LIMIT_BYTES = 20 * 1024 * 1024;
/** The largest input file of a batch: the Files API's 2 GB per file ("The maximum allowed file size for an input file is 2GB"). */
export const GEMINI_FILES_LIMIT_BYTES = 2 * 1024 * 1024 * 1024;
/** The mime type a batch's JSONL input file is uploaded with (what the Batch API guide passes to `ai.files.upload`). */
export const GEMINI_BATCH_FILE_MIME_TYPE = 'jsonl';
/** Batches per page when {@link GeminiBatchGenerator.findBatch} lists them. */
export const DEFAULT_BATCH_LIST_PAGE_SIZE = 100;
/** The API version of the download URL (the client's own is pinned to it by `genAiOptions`). */
const API_VERSION = 'v1beta';
/** A Files API resource name, as it may be put in a download URL. */
const FILE_NAME = /^files\/[A-Za-z0-9_.-]+$/;

/** Configuration of a {@link GeminiBatchGenerator}. */
export interface GeminiBatchGeneratorConfig {
  /** Gemini API key (`x-goog-api-key`). Never logged, never put in an error message. */
  readonly apiKey: string;
  /** Model id. Default {@link DEFAULT_GEMINI_IMAGE_MODEL}. */
  readonly model?: string;
  /** API base URL (e.g. a local fake server). Default: Google's endpoint (pinned, see `genAiOptions`). */
  readonly baseUrl?: string;
  /**
   * Timeout of one call (create, get, list page, cancel), ms. Default
   * {@link DEFAULT_GEMINI_TIMEOUT_MS}. A create carries up to 20 MB inline and a get of a
   * finished batch all its images, so this is about transfer, not about the batch's own
   * hours. Through a file (upload, download) it bounds the time without progress instead:
   * each request of the upload and each chunk of the download starts it again, so a 2 GB
   * file is not cut because it is big, only when it stalls.
   */
  readonly timeoutMs?: number;
  /** Largest inline create body, bytes; above it the requests go as a JSONL file. Default {@link GEMINI_BATCH_INLINE_LIMIT_BYTES} (lower it in tests). */
  readonly maxInlineBytes?: number;
  /** Largest JSONL input file, bytes; above it the create is refused unsent. Default {@link GEMINI_FILES_LIMIT_BYTES} (lower it in tests). */
  readonly maxFileBytes?: number;
  /** Page size of the listing `findBatch` reads. Default {@link DEFAULT_BATCH_LIST_PAGE_SIZE}. */
  readonly listPageSize?: number;
  /** Scheduler of the timeouts. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
}

/** What one SDK call is given: our abort signal and our fetch (timeouts, `Retry-After`, the raw answer). */
interface CallContext {
  readonly abortSignal: AbortSignal;
  readonly httpOptions: { readonly fetch: typeof fetch };
  /** The JSON body of the first successful answer of a `batches.get`, as the server sent it (before the SDK's conversion). */
  rawBody(): unknown;
  /**
   * Our fetch without the raw-answer capture and with the call's abort signal when the
   * request has none: for requests the SDK sends without one (the upload's chunks) and
   * for our own download of a responses file.
   */
  readonly transferFetch: typeof fetch;
  /** The transfer moved on: the timeout counts from now (see {@link GeminiBatchGeneratorConfig.timeoutMs}). */
  progress(): void;
}

/** One request of a batch, built once for both ways of sending it. */
interface PreparedRequest {
  readonly key: string;
  readonly content: ImageContentRequest;
}

/** One entry of a succeeded batch's output (an inlined response or a line of the responses file). */
interface OutputEntry {
  readonly response?: unknown;
  readonly error?: { readonly code?: number | undefined; readonly message?: string | undefined; readonly details?: readonly unknown[] | undefined } | undefined;
}

/**
 * {@link BatchGenerator} over the Gemini Developer API's Batch API (`@google/genai`'s
 * `ai.batches`), at half the interactive price and with hours of latency.
 *
 * - The client is built exactly as the interactive adapter's (`createGenAiClient(genAiOptions(...))`:
 *   Gemini API, `v1beta`, pinned base URL), with its own undici `Agent` so `timeoutMs` holds.
 * - Each request of a batch is what an interactive call would send (`imageContentRequest`:
 *   prompt, inline input image, `responseModalities`, `imageConfig`), keyed by its
 *   {@link BatchRequest.key}. Up to {@link GEMINI_BATCH_INLINE_LIMIT_BYTES} the requests
 *   travel inline (`metadata: { key }`). Above it they are written as a JSONL file, one
 *   `{"key": ..., "request": <the GenerateContentRequest the inline create would carry>}`
 *   per line, uploaded with `ai.files.upload` (the resumable protocol, mime type
 *   {@link GEMINI_BATCH_FILE_MIME_TYPE}), and the batch is created from that file
 *   (`src: 'files/<id>'`). A file above {@link GEMINI_FILES_LIMIT_BYTES} is refused with
 *   `invalid_request` before anything is sent. The input file is left to the Files API's
 *   own expiry (48 hours): the batch reads it after the create, and a create whose answer
 *   was lost may have made a batch that still needs it.
 * - `getBatch` maps the SDK's `JOB_STATE_*` to {@link BatchState}. A succeeded batch's
 *   inlined responses, or the lines of its responses file (`dest.fileName`: downloaded from
 *   `download/v1beta/files/<id>:download?alt=media` with the key header, read as a stream
 *   one line at a time, never as one JSON document), are parsed by the interactive answer
 *   parser (`imageFromAnswer`: thought parts skipped, bytes probed, usage kept) and
 *   per-request errors (`google.rpc.Status`, gRPC codes) classified by the interactive
 *   classifier. A response without a key (or a line that is not JSON) is dropped: it
 *   cannot be given to a slot; a request without a response is simply absent.
 * - Cold Observables, one HTTP call each (a listing: one per page; a create through a file:
 *   the upload's start and chunks, then the create; a get of a file batch: the get, then
 *   the download), no retries: the engine decides. Unsubscribing aborts the call. Errors
 *   are {@link PipelineError}s classified as interactive ones (429 `rate_limited` with
 *   RetryInfo, 5xx `overloaded`, 401/403 `auth`, ...), the upload's and the download's too.
 * - Vertex AI is not supported: its batches read from and write to Cloud Storage or BigQuery.
 *
 * @example
 * const batches = new GeminiBatchGenerator({ apiKey: config.gemini.apiKey ?? '' });
 * batches.createBatch('job-1/round-1', requests).subscribe((name) => store(name));
 */
export class GeminiBatchGenerator implements BatchGenerator {
  /** The effective configuration, frozen, without the key. */
  readonly config: Readonly<Required<Omit<GeminiBatchGeneratorConfig, 'apiKey' | 'baseUrl'>> & { baseUrl: string | undefined }>;
  // The key and the SDK client (which holds it) live in #private fields, as in the interactive adapter.
  readonly #apiKey: string;
  readonly #ai: GoogleGenAI;
  /** The HTTP client of every call: with our own fetch the SDK adds no dispatcher, and Node's default one would end a call at 300 s. */
  readonly #dispatcher: Agent;
  readonly #capabilities: ImageModelCapabilities;
  /** A stage's input image is shared by its attempts: encoded once for all of them. */
  readonly #base64 = new WeakMap<InputImage, string>();

  constructor(config: GeminiBatchGeneratorConfig) {
    if (!config.apiKey) throw new Error('GeminiBatchGenerator: apiKey is required');
    this.config = Object.freeze({
      model: config.model ?? DEFAULT_GEMINI_IMAGE_MODEL,
      baseUrl: config.baseUrl,
      timeoutMs: config.timeoutMs ?? DEFAULT_GEMINI_TIMEOUT_MS,
      maxInlineBytes: config.maxInlineBytes ?? GEMINI_BATCH_INLINE_LIMIT_BYTES,
      maxFileBytes: config.maxFileBytes ?? GEMINI_FILES_LIMIT_BYTES,
      listPageSize: config.listPageSize ?? DEFAULT_BATCH_LIST_PAGE_SIZE,
      scheduler: config.scheduler ?? asyncScheduler,
    });
    this.#apiKey = config.apiKey;
    this.#capabilities = imageModelCapabilities(this.config.model);
    this.#dispatcher = new Agent({ headersTimeout: this.config.timeoutMs, bodyTimeout: this.config.timeoutMs });
    this.#ai = createGenAiClient(genAiOptions({ apiKey: this.#apiKey, baseUrl: config.baseUrl, vertex: undefined }));
  }

  /** The model the answers are priced as (at batch prices). */
  get model(): string {
    return this.config.model;
  }

  /** What JSON.stringify and pino print: the settings, never the key. */
  toJSON(): unknown {
    return { model: this.config.model, baseUrl: this.config.baseUrl, timeoutMs: this.config.timeoutMs };
  }

  /** What `console.log(generator)` prints: the settings, never the key. */
  [inspect.custom](): string {
    return `GeminiBatchGenerator ${inspect(this.toJSON())}`;
  }

  createBatch(displayName: string, requests: readonly BatchRequest[]): Observable<string> {
    return this.call('batches.create', async (context) => {
      // Built (and measured) before anything is sent: a refused batch costs no call.
      const prepared = this.prepare(requests);
      const inlined = prepared.map(inlinedRequest);
      const src = fitsInline(inlined, this.config.maxInlineBytes) ? inlined : await this.upload(displayName, jsonlInput(prepared, this.config.maxFileBytes), context);
      const job = await this.#ai.batches.create({
        model: this.config.model,
        src,
        config: { displayName, abortSignal: context.abortSignal, httpOptions: context.httpOptions },
      });
      if (job.name === undefined || job.name === '') throw new PipelineError('network', 'batches.create answered without a batch name');
      return job.name;
    });
  }

  findBatch(displayName: string): Observable<string | null> {
    return this.call('batches.list', async (context) => {
      const pager = await this.#ai.batches.list({
        config: { pageSize: this.config.listPageSize, abortSignal: context.abortSignal, httpOptions: context.httpOptions },
      });
      // The API lists newest first, but nothing promises it: the newest match by createTime wins.
      let found: BatchJob | undefined;
      for await (const job of pager) {
        if (job.displayName !== displayName || job.name === undefined) continue;
        if (found === undefined || (job.createTime ?? '') > (found.createTime ?? '')) found = job;
      }
      return found?.name ?? null;
    });
  }

  getBatch(name: string): Observable<BatchStatus> {
    return this.call('batches.get', async (context) => {
      const job = await this.#ai.batches.get({ name, config: { abortSignal: context.abortSignal, httpOptions: context.httpOptions } });
      const state = batchStateOf(job.state);
      if (state === 'succeeded') {
        const inlined = job.dest?.inlinedResponses;
        const file = job.dest?.fileName;
        if (inlined === undefined && file !== undefined && file !== '') return { name, state, responses: await this.fileResponses(file, context) };
        return { name, state, responses: await this.responses(inlined ?? []) };
      }
      // The SDK's Gemini API converter drops `Operation.error`: the reason is read from the raw answer.
      const reason = state === 'failed' || state === 'expired' || state === 'cancelled' ? (operationErrorOf(context.rawBody(), [this.#apiKey]) ?? `the batch ended ${state}`) : undefined;
      return { name, state, ...(reason !== undefined ? { error: reason } : {}) };
    });
  }

  cancelBatch(name: string): Observable<void> {
    return this.call('batches.cancel', async (context) => {
      await this.#ai.batches.cancel({ name, config: { abortSignal: context.abortSignal, httpOptions: context.httpOptions } });
    });
  }

  /** The requests of a batch, checked (at least one, distinct keys, sizes the model takes) and built as an interactive call's. */
  private prepare(requests: readonly BatchRequest[]): PreparedRequest[] {
    if (requests.length === 0) throw new PipelineError('invalid_request', 'a batch needs at least one request');
    const keys = new Set(requests.map((r) => r.key));
    if (keys.size !== requests.length) throw new PipelineError('invalid_request', 'two requests of a batch share a key: their responses could not be told apart');
    return requests.map((r) => ({ key: r.key, content: imageContentRequest(r.request, { model: this.config.model, capabilities: this.#capabilities, base64: this.#base64 }) }));
  }

  /**
   * Uploads a batch's JSONL input through the Files API (`ai.files.upload`: a resumable
   * start, then the bytes in chunks with `upload` / `upload, finalize`) and answers the
   * file's name. The SDK sends the chunks with the client's own HTTP options only, so the
   * upload goes through a client of its own whose fetch is this call's (timeout, abort,
   * `Retry-After`): the same settings and key as {@link GeminiBatchGenerator.#ai}.
   */
  private async upload(displayName: string, file: Blob, context: CallContext): Promise<string> {
    const options = genAiOptions({ apiKey: this.#apiKey, baseUrl: this.config.baseUrl, vertex: undefined });
    const transfer: typeof fetch = (input, init) => {
      context.progress();
      return context.transferFetch(input, init);
    };
    // `createGenAiClient`'s own construction, plus the client-wide fetch (its options type has none).
    const uploader = new GoogleGenAI({ ...options, httpOptions: { ...options.httpOptions, fetch: transfer } });
    const uploaded = await uploader.files.upload({ file, config: { mimeType: GEMINI_BATCH_FILE_MIME_TYPE, displayName } });
    const name = uploaded.name;
    if (name === undefined || name === '') throw new PipelineError('network', 'files.upload answered without a file name');
    context.progress(); // the create that follows gets a whole timeout of its own
    return name;
  }

  private async responses(inlined: readonly InlinedResponse[]): Promise<BatchResponse[]> {
    const out: BatchResponse[] = [];
    for (const entry of inlined) {
      const key = entry.metadata?.['key'];
      if (typeof key !== 'string') continue;
      const response = await this.responseOf(key, entry);
      if (response !== undefined) out.push(response);
    }
    return out;
  }

  /**
   * The responses of a batch created from a file: its responses file, downloaded through
   * this call's fetch (our key header, never in the URL) and parsed one line at a time as
   * it arrives, so only the current line and the decoded images are held.
   */
  private async fileResponses(fileName: string, context: CallContext): Promise<BatchResponse[]> {
    if (!FILE_NAME.test(fileName)) throw new PipelineError('invalid_request', `the batch's responses file ${maskSecrets(fileName, [this.#apiKey], 120)} is not a Files API name`);
    const base = (this.config.baseUrl ?? GEMINI_API_BASE_URL).replace(/\/+$/, '');
    context.progress();
    const answer = await context.transferFetch(`${base}/download/${API_VERSION}/${fileName}:download?alt=media`, {
      method: 'GET',
      headers: { 'x-goog-api-key': this.#apiKey },
      signal: context.abortSignal,
    });
    if (!answer.ok) throw await apiErrorOf(answer);
    const out: BatchResponse[] = [];
    if (answer.body === null) return out;
    for await (const line of jsonLines(chunksOf(answer.body), context.progress)) {
      const entry = parseLine(line);
      const key = entry?.key ?? entry?.metadata?.key;
      if (entry === undefined || typeof key !== 'string') continue;
      const response = await this.responseOf(key, entry);
      if (response !== undefined) out.push(response);
    }
    return out;
  }

  /** One output entry -> its {@link BatchResponse}: the image, or the classified error; undefined when it has neither. */
  private async responseOf(key: string, entry: OutputEntry): Promise<BatchResponse | undefined> {
    if (entry.error !== undefined && entry.error !== null) return { key, error: classifyRequestError(entry.error, [this.#apiKey]) };
    if (entry.response === undefined || entry.response === null) return undefined;
    // The SDK's GenerateContentResponse (inline) and the wire's JSON (file) carry the fields the parser reads (candidates, promptFeedback, usageMetadata).
    return imageFromAnswer(entry.response as GeminiResponseLike, [this.#apiKey]).then(
      (image) => ({ key, image }),
      (error: unknown) => ({ key, error: classifyGeminiError(error, { secrets: [this.#apiKey] }) }),
    );
  }

  /**
   * One SDK call as a cold Observable: our timeout (a `timeout` error, the call aborted),
   * abort on unsubscribe, the `Retry-After` header the SDK drops, the raw answer, and every
   * failure classified as an interactive call's.
   */
  private call<T>(operation: string, run: (context: CallContext) => Promise<T>): Observable<T> {
    return new Observable<T>((subscriber) => {
      const { scheduler, timeoutMs } = this.config;
      const abort = new AbortController();
      let timedOut = false;
      let retryAfterHeader: string | null = null;
      let rawBody: unknown;
      let rawCaptured = false;
      // The timeout counts from the start, or from the last progress of a transfer (`progress()`).
      let lastProgress = scheduler.now();
      const onTimeout = (): void => {
        const idle = scheduler.now() - lastProgress;
        if (idle < timeoutMs) {
          timer = scheduler.schedule(onTimeout, timeoutMs - idle);
          return;
        }
        timedOut = true;
        abort.abort();
        subscriber.error(new PipelineError('timeout', `${operation} timed out after ${timeoutMs} ms`));
      };
      let timer = scheduler.schedule(onTimeout, timeoutMs);
      const send = async (input: Parameters<typeof fetch>[0], init: RequestInit | undefined, capture: boolean): Promise<Response> => {
        // `dispatcher` is undici's extension of RequestInit (Node's fetch is undici 6).
        const response = await fetch(input, { ...init, signal: init?.signal ?? abort.signal, dispatcher: this.#dispatcher } as RequestInit);
        if (!response.ok) retryAfterHeader = response.headers.get('retry-after');
        else if (capture && !rawCaptured) {
          rawCaptured = true;
          rawBody = await response.clone().json().catch(() => undefined);
        }
        return response;
      };
      const fetchFn: typeof fetch = (input, init) => send(input, init, operation === 'batches.get');
      const transferFetch: typeof fetch = (input, init) => send(input, init, false);
      const progress = (): void => {
        lastProgress = scheduler.now();
      };
      run({ abortSignal: abort.signal, httpOptions: { fetch: fetchFn }, rawBody: () => rawBody, transferFetch, progress }).then(
        (value) => {
          timer.unsubscribe();
          if (timedOut) return;
          subscriber.next(value);
          subscriber.complete();
        },
        (error: unknown) => {
          timer.unsubscribe();
          subscriber.error(classifyGeminiError(error, { timedOut, retryAfterHeader, secrets: [this.#apiKey] }));
        },
      );
      return () => {
        timer.unsubscribe();
        abort.abort();
      };
    });
  }
}

/**
 * The SDK's job state (it turns the wire's `BATCH_STATE_*` into `JOB_STATE_*`) -> {@link BatchState}.
 * States the Gemini API does not send today (queued, paused, cancelling, updating) read as
 * the nearest one we have; an unknown state is `running`: the caller keeps polling it.
 */
export function batchStateOf(state: string | undefined): BatchState {
  switch (state) {
    case 'JOB_STATE_PENDING':
    case 'JOB_STATE_QUEUED':
      return 'pending';
    case 'JOB_STATE_SUCCEEDED':
    case 'JOB_STATE_PARTIALLY_SUCCEEDED':
      return 'succeeded';
    case 'JOB_STATE_FAILED':
      return 'failed';
    case 'JOB_STATE_CANCELLED':
      return 'cancelled';
    case 'JOB_STATE_EXPIRED':
      return 'expired';
    default:
      return 'running';
  }
}

/** `google.rpc.Code` -> the HTTP status the API would answer for it (google.rpc's own mapping). */
const HTTP_STATUS_OF_GRPC_CODE: Readonly<Record<number, number>> = {
  1: 499,
  2: 500,
  3: 400,
  4: 504,
  5: 404,
  6: 409,
  7: 403,
  8: 429,
  9: 400,
  10: 409,
  11: 400,
  12: 501,
  13: 500,
  14: 503,
  15: 500,
  16: 401,
};

/**
 * One request's `error` in a batch (a `google.rpc.Status`: gRPC `code`, `message`,
 * `details`) -> the {@link PipelineError} the same failure of an interactive call gets: it
 * is handed to the interactive classifier as the HTTP error it stands for, so RetryInfo,
 * quota and key-reason rules apply alike.
 */
export function classifyRequestError(status: { readonly code?: number | undefined; readonly message?: string | undefined; readonly details?: readonly unknown[] | undefined }, secrets: readonly string[] = []): PipelineError {
  const httpStatus = HTTP_STATUS_OF_GRPC_CODE[status.code ?? 2] ?? 500;
  const body = JSON.stringify({ error: { code: httpStatus, message: status.message ?? 'batch request failed', details: status.details ?? [] } });
  // Shaped as the SDK's `ApiError` (an Error whose message is the JSON body, with `status`): what the classifier reads.
  return classifyGeminiError(Object.assign(new Error(body), { status: httpStatus }), { secrets });
}

/** The `error.message` of a raw batch `Operation` (why it failed, expired or was cancelled), masked; undefined when it has none. */
function operationErrorOf(raw: unknown, secrets: readonly string[]): string | undefined {
  const error = (raw as { error?: { code?: unknown; message?: unknown } } | null | undefined)?.error;
  if (error === undefined || error === null || typeof error.message !== 'string') return undefined;
  return maskSecrets(error.message, secrets, 300);
}

/** A prepared request as the SDK's inlined request (`metadata: { key }`; the SDK sends `config` as `generationConfig`). */
function inlinedRequest(r: PreparedRequest): InlinedRequest {
  return {
    contents: r.content.contents.map((c) => ({ role: c.role, parts: [...c.parts] })),
    config: { responseModalities: sdkModalities(r.content.config.responseModalities), imageConfig: { ...r.content.config.imageConfig } },
    metadata: { key: r.key },
  };
}

/**
 * Whether the inlined requests fit the inline limit, measured as the JSON the create body
 * carries for them (`[a,b,...]`), one request at a time: the measure stops as soon as the
 * limit is passed, and never builds one string of the whole batch (a batch near the 2 GB
 * file limit would pass the longest string V8 can make).
 */
function fitsInline(inlined: readonly InlinedRequest[], maxBytes: number): boolean {
  let bytes = 2 + Math.max(0, inlined.length - 1); // the brackets and the commas
  for (const r of inlined) {
    bytes += Buffer.byteLength(JSON.stringify(r));
    if (bytes > maxBytes) return false;
  }
  return bytes <= maxBytes;
}

/**
 * The JSONL input file of a batch: per request one line `{"key": ..., "request": ...}`,
 * the request being the `GenerateContentRequest` the inline create carries for it (what
 * the SDK's converter makes of an inlined request: `contents`, `generationConfig`).
 * Built one line at a time into a `Blob` (its parts are kept, not one giant string), and
 * refused with `invalid_request`, unsent, as soon as it passes `maxBytes`.
 */
function jsonlInput(prepared: readonly PreparedRequest[], maxBytes: number): Blob {
  const lines: Blob[] = [];
  let bytes = 0;
  for (const r of prepared) {
    const request = {
      contents: r.content.contents.map((c) => ({ role: c.role, parts: c.parts })),
      generationConfig: { responseModalities: r.content.config.responseModalities, imageConfig: r.content.config.imageConfig },
    };
    const line = `${JSON.stringify({ key: r.key, request })}\n`;
    bytes += Buffer.byteLength(line);
    if (bytes > maxBytes) {
      throw new PipelineError(
        'invalid_request',
        `the batch's ${prepared.length} requests take more than ${maxBytes} bytes as a JSONL file, above the Files API's limit of ${maxBytes} bytes per file; split them into smaller batches`,
      );
    }
    lines.push(new Blob([line]));
  }
  return new Blob(lines, { type: 'application/jsonl' });
}

/**
 * The lines of a streamed JSONL body as they arrive, split on `\n` bytes (a UTF-8
 * character never holds one, and JSON escapes its own newlines), so a line or a character
 * cut across chunks comes out whole; a trailing `\r` and empty lines are dropped. Only the
 * current line is held. `onChunk` is called per chunk received (the transfer's progress).
 *
 * @example
 * for await (const line of jsonLines(chunks, () => {})) JSON.parse(line);
 */
export async function* jsonLines(body: AsyncIterable<Uint8Array>, onChunk: () => void = () => undefined): AsyncGenerator<string> {
  let pending: Buffer[] = [];
  const flush = (last: Buffer): string => {
    pending.push(last);
    const text = Buffer.concat(pending).toString('utf8');
    pending = [];
    return text.endsWith('\r') ? text.slice(0, -1) : text;
  };
  for await (const chunk of body) {
    onChunk();
    let bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    for (let nl = bytes.indexOf(0x0a); nl >= 0; nl = bytes.indexOf(0x0a)) {
      const line = flush(bytes.subarray(0, nl));
      if (line.trim() !== '') yield line;
      bytes = bytes.subarray(nl + 1);
    }
    if (bytes.byteLength > 0) pending.push(bytes);
  }
  if (pending.length > 0) {
    const line = flush(Buffer.alloc(0));
    if (line.trim() !== '') yield line;
  }
}

/** The chunks of a web stream; leaving early (an error) cancels the stream, so its connection is not kept. */
async function* chunksOf(body: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = body.getReader();
  let done = false;
  try {
    for (;;) {
      const next = await reader.read();
      if (next.done) {
        done = true;
        return;
      }
      yield next.value;
    }
  } finally {
    if (!done) void reader.cancel().catch(() => undefined);
  }
}

/** One line of a responses file (`{ key, response | error }`), or undefined when it is not a JSON object. */
function parseLine(line: string): (OutputEntry & { readonly key?: unknown; readonly metadata?: { readonly key?: unknown } }) | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return undefined;
  }
  // JSON from the network: the fields read are checked where they are used.
  return parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) ? (parsed as OutputEntry & { key?: unknown; metadata?: { key?: unknown } }) : undefined;
}

/** A failed download as the SDK's `ApiError` (its message the JSON error body, as the SDK makes it): what the classifier reads. */
async function apiErrorOf(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => '');
  const json = (response.headers.get('content-type') ?? '').includes('application/json');
  const message = json ? text : JSON.stringify({ error: { message: text, code: response.status, status: response.statusText } });
  return new ApiError({ message, status: response.status });
}
