import { inspect } from 'node:util';
import { GoogleGenAI, Modality } from '@google/genai';
import { asyncScheduler, Observable, type SchedulerLike } from 'rxjs';
import type { GeneratedImage, GenerationRequest, ImageGenerator, InputImage, TokenUsage } from '../domain/ports.js';
import { PipelineError } from '../domain/error-class.js';
import { probeImage } from './image-codec.js';
import { classifyGeminiError, classifyGeminiResponse, type GeminiResponseLike } from './classify-gemini-error.js';

/** Default Gemini image model. */
export const DEFAULT_GEMINI_IMAGE_MODEL = 'gemini-2.5-flash-image';
/** Default per-call timeout, ms. */
export const DEFAULT_GEMINI_TIMEOUT_MS = 60_000;

/** What we send to `models.generateContent` (only the fields we use). */
export interface GeminiGenerateContentParams {
  readonly model: string;
  readonly contents: readonly {
    readonly role: 'user';
    readonly parts: readonly ({ readonly text: string } | { readonly inlineData: { readonly mimeType: string; readonly data: string } })[];
  }[];
  readonly config: {
    readonly responseModalities: readonly 'IMAGE'[];
    readonly imageConfig: { readonly aspectRatio: string };
    readonly abortSignal: AbortSignal;
    /** Per-call fetch: lets the adapter see the `Retry-After` header the SDK drops. */
    readonly httpOptions: { readonly fetch: typeof fetch };
  };
}

/**
 * The part of the Gemini client the adapter uses (kysely style: a small interface we
 * own). The default is `new GoogleGenAI(...).models`; tests and hosts may pass their own.
 */
export interface GeminiModelsClient {
  generateContent(params: GeminiGenerateContentParams): Promise<GeminiResponseLike>;
}

/** Configuration of a {@link GeminiImageGenerator}. */
export interface GeminiImageGeneratorConfig {
  /** Gemini API key (`x-goog-api-key`). Never logged, never put in an error message. */
  readonly apiKey: string;
  /** Model id. Default {@link DEFAULT_GEMINI_IMAGE_MODEL}. */
  readonly model?: string;
  /** API base URL (e.g. a local fake server). Default: the SDK's (Google's) endpoint. */
  readonly baseUrl?: string;
  /** Per-call timeout, ms, covering the whole call (headers and body). Default {@link DEFAULT_GEMINI_TIMEOUT_MS}. */
  readonly timeoutMs?: number;
  /** Scheduler of the timeout. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
  /** Client to use instead of building a `GoogleGenAI` (then `apiKey`/`baseUrl` only serve redaction). */
  readonly client?: GeminiModelsClient;
}

/**
 * {@link ImageGenerator} over Gemini's `generateContent` (`@google/genai`).
 *
 * Each call sends the prompt and the stage's input image (inline base64, its real
 * mime type) with `responseModalities: ['IMAGE']` and `imageConfig.aspectRatio`, and
 * emits the last non-thought image part, checked to decode (sharp header probe).
 *
 * - Cold: nothing is sent until subscription. Unsubscribing aborts the HTTP request
 *   and emits nothing.
 * - One attempt per subscription: SDK retries stay off (the engine retries, with
 *   budget and backoff). The timeout (`timeoutMs`) aborts the request -> `timeout`.
 * - Every failure is a {@link PipelineError} classified by {@link classifyGeminiError} /
 *   {@link classifyGeminiResponse}; undecodable image bytes -> `corrupt_image`.
 *
 * @example
 * const gemini = new GeminiImageGenerator({ apiKey: config.gemini.apiKey ?? "" }); // config = loadConfig()
 * gemini.generate(request).subscribe({ next: (img) => store(img), error: (e: PipelineError) => log(e.errorClass) });
 */
export class GeminiImageGenerator implements ImageGenerator {
  /** The effective configuration, frozen, without the key. */
  readonly config: Readonly<Required<Omit<GeminiImageGeneratorConfig, 'client' | 'baseUrl' | 'apiKey'>> & { baseUrl: string | undefined }>;
  // The key and the SDK client (which holds it) live in #private fields: neither
  // `util.inspect` (console.log), JSON.stringify, pino nor a spread can reach them.
  readonly #apiKey: string;
  readonly #client: GeminiModelsClient;
  private readonly base64Cache = new WeakMap<InputImage, string>();

  constructor(config: GeminiImageGeneratorConfig) {
    if (!config.apiKey && !config.client) throw new Error('GeminiImageGenerator: apiKey is required');
    this.config = Object.freeze({
      model: config.model ?? DEFAULT_GEMINI_IMAGE_MODEL,
      baseUrl: config.baseUrl,
      timeoutMs: config.timeoutMs ?? DEFAULT_GEMINI_TIMEOUT_MS,
      scheduler: config.scheduler ?? asyncScheduler,
    });
    this.#apiKey = config.apiKey;
    this.#client = config.client ?? sdkClient(config.apiKey, config.baseUrl);
  }

  /** What JSON.stringify and pino print: the settings, never the key. */
  toJSON(): unknown {
    return { model: this.config.model, baseUrl: this.config.baseUrl, timeoutMs: this.config.timeoutMs };
  }

  /** What `console.log(generator)` prints: the settings, never the key. */
  [inspect.custom](): string {
    return `GeminiImageGenerator ${inspect(this.toJSON())}`;
  }

  generate(request: GenerationRequest): Observable<GeneratedImage> {
    return new Observable<GeneratedImage>((subscriber) => {
      const abort = new AbortController();
      let timedOut = false;
      let retryAfterHeader: string | null = null;
      const timer = this.config.scheduler.schedule(() => {
        timedOut = true;
        abort.abort();
        // Do not wait for the SDK to notice the abort: the deadline is ours.
        subscriber.error(new PipelineError('timeout', `generateContent timed out after ${this.config.timeoutMs} ms`));
      }, this.config.timeoutMs);
      const capturingFetch: typeof fetch = async (input, init) => {
        const response = await fetch(input, init);
        if (!response.ok) retryAfterHeader = response.headers.get('retry-after');
        return response;
      };

      const call = async (): Promise<GeneratedImage> => {
        const response = await this.#client.generateContent(this.params(request, abort.signal, capturingFetch));
        const verdict = classifyGeminiResponse(response, [this.#apiKey]);
        if ('error' in verdict) throw verdict.error;
        const bytes = Buffer.from(verdict.image.data, 'base64');
        const probe = await probeImage(bytes).catch((error: unknown) => {
          throw new PipelineError('corrupt_image', `model returned an inline ${verdict.image.mimeType} part that is not an image (${bytes.byteLength} bytes)`, {
            cause: error,
          });
        });
        if (timedOut) throw new PipelineError('timeout', 'generateContent timed out');
        return { bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), mimeType: probe.mimeType, usage: toTokenUsage(response.usageMetadata) };
      };

      call().then(
        (image) => {
          timer.unsubscribe();
          subscriber.next(image);
          subscriber.complete();
        },
        (error: unknown) => {
          timer.unsubscribe();
          // After an unsubscribe or our timeout the subscriber is closed and this is a no-op.
          subscriber.error(
            classifyGeminiError(error, { timedOut, retryAfterHeader, secrets: [this.#apiKey] }),
          );
        },
      );

      return () => {
        timer.unsubscribe();
        abort.abort();
      };
    });
  }

  private params(request: GenerationRequest, abortSignal: AbortSignal, fetchFn: typeof fetch): GeminiGenerateContentParams {
    const parts: GeminiGenerateContentParams['contents'][number]['parts'][number][] = [{ text: request.prompt }];
    if (request.input !== null) parts.push({ inlineData: { mimeType: request.input.mimeType, data: this.base64(request.input) } });
    return {
      model: this.config.model,
      contents: [{ role: 'user', parts }],
      config: {
        responseModalities: ['IMAGE'],
        imageConfig: { aspectRatio: request.aspectRatio },
        abortSignal,
        httpOptions: { fetch: fetchFn },
      },
    };
  }

  /** The input image is shared by every attempt of a stage: encode it once. */
  private base64(input: InputImage): string {
    let data = this.base64Cache.get(input);
    if (data === undefined) {
      data = Buffer.from(input.bytes.buffer, input.bytes.byteOffset, input.bytes.byteLength).toString('base64');
      this.base64Cache.set(input, data);
    }
    return data;
  }
}

/** Gemini `usageMetadata` -> {@link TokenUsage} (undefined when the answer has none). */
export function toTokenUsage(usage: GeminiResponseLike['usageMetadata']): TokenUsage | undefined {
  if (usage === undefined) return undefined;
  return { promptTokens: usage.promptTokenCount, outputTokens: usage.candidatesTokenCount, totalTokens: usage.totalTokenCount };
}

function sdkClient(apiKey: string, baseUrl: string | undefined): GeminiModelsClient {
  // No `timeout` and no `retryOptions` here on purpose: the adapter owns the timeout
  // (so it can tell a timeout from an unsubscribe) and the engine owns retries.
  const ai = new GoogleGenAI({ apiKey, apiVersion: 'v1beta', httpOptions: baseUrl === undefined ? {} : { baseUrl } });
  return {
    generateContent: (params) =>
      ai.models.generateContent({
        model: params.model,
        contents: params.contents.map((c) => ({ role: c.role, parts: [...c.parts] })),
        config: {
          responseModalities: params.config.responseModalities.map(() => Modality.IMAGE),
          imageConfig: { aspectRatio: params.config.imageConfig.aspectRatio },
          abortSignal: params.config.abortSignal,
          httpOptions: { fetch: params.config.httpOptions.fetch },
        },
      }),
  };
}
