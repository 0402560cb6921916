import { inspect } from 'node:util';
import { GoogleGenAI, Modality } from '@google/genai';
import { asyncScheduler, Observable, type SchedulerLike } from 'rxjs';
import { Agent } from 'undici';
import { DEFAULT_GEMINI_IMAGE_MODEL, imageModelCapabilities, type ImageModelCapabilities } from '../domain/models.js';
import type { GeneratedImage, GenerationRequest, ImageGenerator, InputImage, TokenUsage } from '../domain/ports.js';
import { PipelineError, withUsage } from '../domain/error-class.js';
import { bufferedFetch } from './buffered-fetch.js';
import { probeImage } from './image-codec.js';
import { classifyGeminiError, classifyGeminiResponse, type GeminiResponseLike } from './classify-gemini-error.js';

/** Default Gemini image model (owned by the model table, `src/domain/models.ts`). */
export { DEFAULT_GEMINI_IMAGE_MODEL } from '../domain/models.js';
/**
 * The Gemini API's endpoint, pinned: without it the SDK takes `GOOGLE_GEMINI_BASE_URL`
 * from the environment, and the key would go wherever that says. `GEMINI_BASE_URL` (the
 * project's setting) is the one way to change it.
 */
export const GEMINI_API_BASE_URL = 'https://generativelanguage.googleapis.com/';
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
    /** From the model table: `['IMAGE']`, or `['TEXT', 'IMAGE']` for the Gemini 3 image models. */
    readonly responseModalities: readonly ('TEXT' | 'IMAGE')[];
    /** `imageSize` only when the stage set one (and the model takes it). */
    readonly imageConfig: { readonly aspectRatio: string; readonly imageSize?: string };
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
  /** Gemini API key (`x-goog-api-key`). Never logged, never put in an error message. Not used with `vertex`. */
  readonly apiKey?: string;
  /**
   * Vertex AI instead of the Gemini API: the project and location, authenticated with
   * Google application default credentials (`gcloud auth application-default login`, a
   * service account). Absent: the Gemini API with `apiKey`. The choice is this setting
   * alone: `GOOGLE_GENAI_USE_VERTEXAI` in the environment changes nothing.
   */
  readonly vertex?: GeminiVertexConfig;
  /** Model id. Default {@link DEFAULT_GEMINI_IMAGE_MODEL}. */
  readonly model?: string;
  /** API base URL (e.g. a local fake server). Default: the SDK's (Google's) endpoint. */
  readonly baseUrl?: string;
  /**
   * Per-call timeout, ms, covering the whole call (headers and body). Default
   * {@link DEFAULT_GEMINI_TIMEOUT_MS}. Also the HTTP client's own headers and body
   * timeouts (an undici `Agent`), so a value above Node's 300 s default is honoured.
   */
  readonly timeoutMs?: number;
  /** Scheduler of the timeout. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike;
  /** Client to use instead of building a `GoogleGenAI` (then `apiKey`/`baseUrl` only serve redaction). */
  readonly client?: GeminiModelsClient;
}

/** Vertex AI project and location (`GEMINI_VERTEX_PROJECT`, `GEMINI_VERTEX_LOCATION`). */
export interface GeminiVertexConfig {
  readonly project: string;
  /** e.g. `us-central1`, `global`. */
  readonly location: string;
}

/**
 * {@link ImageGenerator} over Gemini's `generateContent` (`@google/genai`).
 *
 * Each call sends the prompt and the stage's input image (inline base64, its real
 * mime type) with the model's `responseModalities` and `imageConfig.aspectRatio` (plus
 * `imageSize` when the stage set one; the model table is `src/domain/models.ts`), and
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
  readonly config: Readonly<Required<Omit<GeminiImageGeneratorConfig, 'client' | 'baseUrl' | 'apiKey' | 'vertex'>> & { baseUrl: string | undefined; vertex: GeminiVertexConfig | undefined }>;
  // The key and the SDK client (which holds it) live in #private fields: neither
  // `util.inspect` (console.log), JSON.stringify, pino nor a spread can reach them.
  readonly #apiKey: string;
  readonly #client: GeminiModelsClient;
  /**
   * The HTTP client of every call: {@link bufferedFetch} over our own dispatcher. The adapter
   * passes its own `fetch` (to read `Retry-After`, and to read an answer without web
   * streams), and then the SDK adds no dispatcher of its own: Node's default one would end
   * any call at 300 s (undici's headers and body timeouts), whatever `timeoutMs` says.
   */
  readonly #fetch: typeof fetch;
  readonly #model: ImageModelCapabilities;
  /** The input image is shared by every attempt of a stage: encode it once. */
  private readonly base64Cache = new WeakMap<InputImage, string>();

  constructor(config: GeminiImageGeneratorConfig) {
    if (!config.apiKey && !config.client && !config.vertex) throw new Error('GeminiImageGenerator: apiKey (or vertex) is required');
    this.config = Object.freeze({
      model: config.model ?? DEFAULT_GEMINI_IMAGE_MODEL,
      baseUrl: config.baseUrl,
      timeoutMs: config.timeoutMs ?? DEFAULT_GEMINI_TIMEOUT_MS,
      scheduler: config.scheduler ?? asyncScheduler,
      vertex: config.vertex === undefined ? undefined : Object.freeze({ ...config.vertex }),
    });
    this.#apiKey = config.apiKey ?? '';
    this.#model = imageModelCapabilities(this.config.model);
    this.#fetch = bufferedFetch(new Agent({ headersTimeout: this.config.timeoutMs, bodyTimeout: this.config.timeoutMs }));
    this.#client = config.client ?? sdkClient(genAiOptions({ apiKey: this.#apiKey, baseUrl: config.baseUrl, vertex: config.vertex }));
  }

  /** The model the answers are priced as (`ImageGenerator.model`). */
  get model(): string {
    return this.config.model;
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
        const response = await this.#fetch(input, init);
        if (!response.ok) retryAfterHeader = response.headers.get('retry-after');
        return response;
      };

      const call = async (): Promise<GeneratedImage> => {
        const response = await this.#client.generateContent(this.params(request, abort.signal, capturingFetch));
        const image = await imageFromAnswer(response, [this.#apiKey]);
        if (timedOut) throw new PipelineError('timeout', 'generateContent timed out');
        return image;
      };

      // Answered: the SDK has read the whole answer, so there is nothing left to abort (a
      // failed call is still aborted: its body may not have been read).
      let answered = false;
      call().then(
        (image) => {
          answered = true;
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
        // Aborting an answered call would only build an AbortError (a stack trace) per call.
        if (!answered) abort.abort();
      };
    });
  }

  private params(request: GenerationRequest, abortSignal: AbortSignal, fetchFn: typeof fetch): GeminiGenerateContentParams {
    const content = imageContentRequest(request, { model: this.config.model, capabilities: this.#model, base64: this.base64Cache });
    return { model: this.config.model, contents: content.contents, config: { ...content.config, abortSignal, httpOptions: { fetch: fetchFn } } };
  }
}

/** The contents and generation settings of one image request: what an interactive call and a batch request both send. */
export interface ImageContentRequest {
  readonly contents: GeminiGenerateContentParams['contents'];
  readonly config: Pick<GeminiGenerateContentParams['config'], 'responseModalities' | 'imageConfig'>;
}

/**
 * The request Gemini gets for one attempt: the prompt, then the stage's input image (inline
 * base64, its real mime type), the model's `responseModalities` and `imageConfig`
 * (`aspectRatio`, and `imageSize` when the stage set one). One function for interactive
 * calls and batch requests, so a batch asks for exactly what a call would.
 *
 * Throws `invalid_request` for an `imageSize` the model does not take (parseJobSpec refuses
 * it for the configured model; a host's own spec may not have been checked).
 * `base64` caches the encoded input: a stage's input is shared by every attempt.
 */
export function imageContentRequest(
  request: GenerationRequest,
  settings: { readonly model: string; readonly capabilities: ImageModelCapabilities; readonly base64: WeakMap<InputImage, string> },
): ImageContentRequest {
  const parts: GeminiGenerateContentParams['contents'][number]['parts'][number][] = [{ text: request.prompt }];
  if (request.input !== null) parts.push({ inlineData: { mimeType: request.input.mimeType, data: cachedBase64(request.input, settings.base64) } });
  if (request.imageSize !== undefined && !settings.capabilities.imageSizes.includes(request.imageSize)) {
    throw new PipelineError('invalid_request', `the model ${settings.model} takes no imageSize ${request.imageSize} (it takes: ${settings.capabilities.imageSizes.join(', ') || 'none'})`);
  }
  return {
    contents: [{ role: 'user', parts }],
    config: {
      responseModalities: settings.capabilities.responseModalities,
      imageConfig: { aspectRatio: request.aspectRatio, ...(request.imageSize !== undefined ? { imageSize: request.imageSize } : {}) },
    },
  };
}

/** The input image is shared by every attempt of a stage: encode it once. */
function cachedBase64(input: InputImage, cache: WeakMap<InputImage, string>): string {
  let data = cache.get(input);
  if (data === undefined) {
    data = Buffer.from(input.bytes.buffer, input.bytes.byteOffset, input.bytes.byteLength).toString('base64');
    cache.set(input, data);
  }
  return data;
}

/**
 * The image of one Gemini answer (an interactive call's, or one response of a batch), or
 * the {@link PipelineError} that says why there is none ({@link classifyGeminiResponse}:
 * blocks, no image; thought parts are skipped). The bytes are checked to decode (sharp
 * header probe): undecodable ones are `corrupt_image`. Every answer is billed, an image or
 * not, so its usage travels with the image and with the failure alike.
 */
export async function imageFromAnswer(response: GeminiResponseLike, secrets: readonly string[]): Promise<GeneratedImage> {
  const verdict = classifyGeminiResponse(response, secrets);
  const usage = toTokenUsage(response.usageMetadata, imageCountOf(response));
  if ('error' in verdict) throw withUsage(verdict.error, usage);
  const bytes = Buffer.from(verdict.image.data, 'base64');
  const probe = await probeImage(bytes).catch((error: unknown) => {
    throw new PipelineError('corrupt_image', `model returned an inline ${verdict.image.mimeType} part that is not an image (${bytes.byteLength} bytes)`, {
      usage,
      cause: error,
    });
  });
  return { bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), mimeType: probe.mimeType, usage };
}

/** The `usageMetadata` fields the cost reads (`thoughtsTokenCount`: thinking, billed as output). */
export interface GeminiUsageMetadataLike {
  readonly promptTokenCount?: number | undefined;
  readonly candidatesTokenCount?: number | undefined;
  readonly totalTokenCount?: number | undefined;
  readonly thoughtsTokenCount?: number | undefined;
}

/**
 * Gemini `usageMetadata` -> {@link TokenUsage} (undefined when the answer has none), with
 * the images the answer held (`imageCount`, see {@link imageCountOf}).
 */
export function toTokenUsage(usage: GeminiUsageMetadataLike | undefined, imageCount?: number): TokenUsage | undefined {
  if (usage === undefined) return undefined;
  return {
    promptTokens: usage.promptTokenCount,
    outputTokens: usage.candidatesTokenCount,
    totalTokens: usage.totalTokenCount,
    thoughtsTokens: usage.thoughtsTokenCount,
    ...(imageCount !== undefined ? { imageCount } : {}),
  };
}

/** Images in an answer: the first candidate's inline image parts that are not thoughts (the ones billed as output images). */
export function imageCountOf(response: GeminiResponseLike): number {
  const parts = response.candidates?.[0]?.content?.parts ?? [];
  return parts.filter((part) => part.thought !== true && part.inlineData?.data !== undefined).length;
}

/** The `GoogleGenAI` constructor options the adapter uses (a subset of the SDK's). */
export interface GeminiClientOptions {
  readonly vertexai: boolean;
  readonly apiKey?: string;
  readonly project?: string;
  readonly location?: string;
  readonly apiVersion?: string;
  readonly httpOptions: { readonly baseUrl: string };
}

/**
 * The `GoogleGenAI` options of a generator: everything pinned, so nothing in the
 * environment changes where requests (and the key) go. The SDK reads
 * `GOOGLE_GENAI_USE_VERTEXAI` / `GOOGLE_GENAI_USE_ENTERPRISE` when `vertexai` is not
 * given (an AI Studio key would go to Vertex AI), `GOOGLE_GEMINI_BASE_URL` /
 * `GOOGLE_VERTEX_BASE_URL` when no `baseUrl` is given, and `GOOGLE_API_KEY` /
 * `GEMINI_API_KEY` / `GOOGLE_CLOUD_PROJECT` / `GOOGLE_CLOUD_LOCATION` when those are not
 * given (checked in @google/genai 2.32's `GoogleGenAI` constructor). So `vertexai` and
 * `baseUrl` are always given, and the key, or the project and location, too.
 *
 * - Gemini API: `vertexai: false`, the key, `v1beta`, `baseUrl` or {@link GEMINI_API_BASE_URL}.
 * - Vertex AI: `vertexai: true`, project and location (application default credentials;
 *   the SDK's default API version, `v1beta1`), `baseUrl` or the location's endpoint,
 *   computed as the SDK does (`global`: `aiplatform.googleapis.com`; `us`, `eu`:
 *   `aiplatform.<loc>.rep.googleapis.com`; else `<loc>-aiplatform.googleapis.com`).
 */
export function genAiOptions(settings: { readonly apiKey: string; readonly baseUrl: string | undefined; readonly vertex: GeminiVertexConfig | undefined }): GeminiClientOptions {
  const { vertex } = settings;
  if (vertex === undefined) {
    return { vertexai: false, apiKey: settings.apiKey, apiVersion: 'v1beta', httpOptions: { baseUrl: settings.baseUrl ?? GEMINI_API_BASE_URL } };
  }
  const { project, location } = vertex;
  const endpoint =
    location === 'global'
      ? 'https://aiplatform.googleapis.com/'
      : location === 'us' || location === 'eu'
        ? `https://aiplatform.${location}.rep.googleapis.com/`
        : `https://${location}-aiplatform.googleapis.com/`;
  return { vertexai: true, project, location, httpOptions: { baseUrl: settings.baseUrl ?? endpoint } };
}

/**
 * The SDK client of a Gemini adapter (interactive calls and batches alike), built from
 * {@link genAiOptions}. No `timeout` and no `retryOptions` on purpose: the adapter owns the
 * timeout (so it can tell a timeout from an unsubscribe) and the engine owns retries.
 */
export function createGenAiClient(options: GeminiClientOptions): GoogleGenAI {
  return new GoogleGenAI({ ...options, httpOptions: { ...options.httpOptions } });
}

/** Our modality names -> the SDK's enum. */
export function sdkModalities(modalities: readonly ('TEXT' | 'IMAGE')[]): Modality[] {
  return modalities.map((m) => (m === 'TEXT' ? Modality.TEXT : Modality.IMAGE));
}

function sdkClient(options: GeminiClientOptions): GeminiModelsClient {
  const ai = createGenAiClient(options);
  return {
    generateContent: (params) =>
      ai.models.generateContent({
        model: params.model,
        contents: params.contents.map((c) => ({ role: c.role, parts: [...c.parts] })),
        config: {
          responseModalities: sdkModalities(params.config.responseModalities),
          imageConfig: { ...params.config.imageConfig },
          abortSignal: params.config.abortSignal,
          httpOptions: { fetch: params.config.httpOptions.fetch },
        },
      }),
  };
}
