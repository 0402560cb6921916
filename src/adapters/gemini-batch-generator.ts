import { inspect } from 'node:util';
import type { BatchJob, GoogleGenAI, InlinedRequest, InlinedResponse } from '@google/genai';
import { asyncScheduler, Observable, type SchedulerLike } from 'rxjs';
import { Agent } from 'undici';
import { PipelineError } from '../domain/error-class.js';
import { DEFAULT_GEMINI_IMAGE_MODEL, imageModelCapabilities, type ImageModelCapabilities } from '../domain/models.js';
import type { BatchGenerator, BatchRequest, BatchResponse, BatchState, BatchStatus, InputImage } from '../domain/ports.js';
import { classifyGeminiError, type GeminiResponseLike } from './classify-gemini-error.js';
import { createGenAiClient, DEFAULT_GEMINI_TIMEOUT_MS, genAiOptions, imageContentRequest, imageFromAnswer, sdkModalities } from './gemini-image-generator.js';
import { maskSecrets } from './mask-secrets.js';

/**
 * What the Batch API takes inline: 20 MB of requests in the create call ("Inline requests
 * ... keep the total request size under 20MB", the Batch API guide). Measured here as the
 * JSON of the inlined requests, which is what the create body carries.
 */
export const GEMINI_BATCH_INLINE_LIMIT_BYTES = 20 * 1024 * 1024;
/** Batches per page when {@link GeminiBatchGenerator.findBatch} lists them. */
export const DEFAULT_BATCH_LIST_PAGE_SIZE = 100;

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
   * {@link DEFAULT_GEMINI_TIMEOUT_MS}. A create carries up to 20 MB and a get of a finished
   * batch all its images, so this is about transfer, not about the batch's own hours.
   */
  readonly timeoutMs?: number;
  /** Largest inline create body, bytes. Default {@link GEMINI_BATCH_INLINE_LIMIT_BYTES} (lower it in tests). */
  readonly maxInlineBytes?: number;
  /** Page size of the listing `findBatch` reads. Default {@link DEFAULT_BATCH_LIST_PAGE_SIZE}. */
  readonly listPageSize?: number;
  /** Scheduler of the timeouts. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
}

/** What one SDK call is given: our abort signal and our fetch (timeouts, `Retry-After`, the raw answer). */
interface CallContext {
  readonly abortSignal: AbortSignal;
  readonly httpOptions: { readonly fetch: typeof fetch };
  /** The JSON body of the last successful answer, as the server sent it (before the SDK's conversion). */
  rawBody(): unknown;
}

/**
 * {@link BatchGenerator} over the Gemini Developer API's Batch API (`@google/genai`'s
 * `ai.batches`), at half the interactive price and with hours of latency.
 *
 * - The client is built exactly as the interactive adapter's (`createGenAiClient(genAiOptions(...))`:
 *   Gemini API, `v1beta`, pinned base URL), with its own undici `Agent` so `timeoutMs` holds.
 * - Each request of a batch is what an interactive call would send (`imageContentRequest`:
 *   prompt, inline input image, `responseModalities`, `imageConfig`), with `metadata: { key }`.
 *   Requests travel inline; above {@link GEMINI_BATCH_INLINE_LIMIT_BYTES} the create is
 *   refused with `invalid_request` before anything is sent (no Files API upload yet: the
 *   caller splits the work into smaller batches).
 * - `getBatch` maps the SDK's `JOB_STATE_*` to {@link BatchState}; a succeeded batch's inlined
 *   responses are parsed by the interactive answer parser (`imageFromAnswer`: thought parts
 *   skipped, bytes probed, usage kept) and per-request errors (`google.rpc.Status`, gRPC
 *   codes) classified by the interactive classifier. A response without a key is dropped
 *   (it cannot be given to a slot); a request without a response is simply absent.
 * - Cold Observables, one HTTP call each (a listing: one per page), no retries: the engine
 *   decides. Unsubscribing aborts the call. Errors are {@link PipelineError}s classified as
 *   interactive ones (429 `rate_limited` with RetryInfo, 5xx `overloaded`, 401/403 `auth`, ...).
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
      const src = this.inlinedRequests(requests);
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
        if (inlined === undefined && job.dest?.fileName !== undefined) {
          throw new PipelineError('invalid_request', `batch ${name} wrote its responses to ${job.dest.fileName}; this adapter reads inline responses only`);
        }
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

  /** The inlined requests of a batch, refused when they pass the inline limit. */
  private inlinedRequests(requests: readonly BatchRequest[]): InlinedRequest[] {
    if (requests.length === 0) throw new PipelineError('invalid_request', 'a batch needs at least one request');
    const keys = new Set(requests.map((r) => r.key));
    if (keys.size !== requests.length) throw new PipelineError('invalid_request', 'two requests of a batch share a key: their responses could not be told apart');
    const src = requests.map((r): InlinedRequest => {
      const content = imageContentRequest(r.request, { model: this.config.model, capabilities: this.#capabilities, base64: this.#base64 });
      return {
        contents: content.contents.map((c) => ({ role: c.role, parts: [...c.parts] })),
        config: { responseModalities: sdkModalities(content.config.responseModalities), imageConfig: { ...content.config.imageConfig } },
        metadata: { key: r.key },
      };
    });
    const bytes = inlineBytes(src);
    if (bytes > this.config.maxInlineBytes) {
      throw new PipelineError(
        'invalid_request',
        `the batch's ${requests.length} requests take ${bytes} bytes inline, above the Batch API's inline limit of ${this.config.maxInlineBytes} bytes; split them into smaller batches (uploading a JSONL file is not supported)`,
      );
    }
    return src;
  }

  private async responses(inlined: readonly InlinedResponse[]): Promise<BatchResponse[]> {
    const out: BatchResponse[] = [];
    for (const entry of inlined) {
      const key = entry.metadata?.['key'];
      if (typeof key !== 'string') continue;
      if (entry.error !== undefined) {
        out.push({ key, error: classifyRequestError(entry.error, [this.#apiKey]) });
      } else if (entry.response !== undefined) {
        // The SDK's GenerateContentResponse carries the fields the parser reads (candidates, promptFeedback, usageMetadata).
        const image = await imageFromAnswer(entry.response as GeminiResponseLike, [this.#apiKey]).then(
          (img) => ({ key, image: img }),
          (error: unknown) => ({ key, error: classifyGeminiError(error, { secrets: [this.#apiKey] }) }),
        );
        out.push(image);
      }
    }
    return out;
  }

  /**
   * One SDK call as a cold Observable: our timeout (a `timeout` error, the call aborted),
   * abort on unsubscribe, the `Retry-After` header the SDK drops, the raw answer, and every
   * failure classified as an interactive call's.
   */
  private call<T>(operation: string, run: (context: CallContext) => Promise<T>): Observable<T> {
    return new Observable<T>((subscriber) => {
      const abort = new AbortController();
      let timedOut = false;
      let retryAfterHeader: string | null = null;
      let rawBody: unknown;
      const timer = this.config.scheduler.schedule(() => {
        timedOut = true;
        abort.abort();
        subscriber.error(new PipelineError('timeout', `${operation} timed out after ${this.config.timeoutMs} ms`));
      }, this.config.timeoutMs);
      const fetchFn: typeof fetch = async (input, init) => {
        // `dispatcher` is undici's extension of RequestInit (Node's fetch is undici 6).
        const response = await fetch(input, { ...init, dispatcher: this.#dispatcher } as RequestInit);
        if (!response.ok) retryAfterHeader = response.headers.get('retry-after');
        else if (operation === 'batches.get') rawBody = await response.clone().json().catch(() => undefined);
        return response;
      };
      run({ abortSignal: abort.signal, httpOptions: { fetch: fetchFn }, rawBody: () => rawBody }).then(
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

/** Bytes the inlined requests take in the create body. */
function inlineBytes(src: readonly InlinedRequest[]): number {
  return Buffer.byteLength(JSON.stringify(src));
}
