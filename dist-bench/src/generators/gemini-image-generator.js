import { GoogleGenAI, Modality } from '@google/genai';
import { asyncScheduler, Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import { probeImage } from '../sinks/image-codec.js';
import { classifyGeminiError, classifyGeminiResponse } from './classify-gemini-error.js';
/** Default Gemini image model. */
export const DEFAULT_GEMINI_IMAGE_MODEL = 'gemini-2.5-flash-image';
/** Default per-call timeout, ms. */
export const DEFAULT_GEMINI_TIMEOUT_MS = 60_000;
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
 * const gemini = new GeminiImageGenerator({ apiKey: process.env.GEMINI_API_KEY! });
 * gemini.generate(request).subscribe({ next: (img) => store(img), error: (e: PipelineError) => log(e.errorClass) });
 */
export class GeminiImageGenerator {
    /** The effective configuration (frozen; the key is kept, never printed). */
    config;
    client;
    base64Cache = new WeakMap();
    constructor(config) {
        if (!config.apiKey && !config.client)
            throw new Error('GeminiImageGenerator: apiKey is required');
        this.config = Object.freeze({
            apiKey: config.apiKey,
            model: config.model ?? DEFAULT_GEMINI_IMAGE_MODEL,
            baseUrl: config.baseUrl,
            timeoutMs: config.timeoutMs ?? DEFAULT_GEMINI_TIMEOUT_MS,
            scheduler: config.scheduler ?? asyncScheduler,
        });
        this.client = config.client ?? sdkClient(config.apiKey, config.baseUrl);
    }
    /** Keeps the key out of `console.log(generator)` and JSON dumps. */
    toJSON() {
        return { model: this.config.model, baseUrl: this.config.baseUrl, timeoutMs: this.config.timeoutMs };
    }
    generate(request) {
        return new Observable((subscriber) => {
            const abort = new AbortController();
            let timedOut = false;
            let retryAfterHeader = null;
            const timer = this.config.scheduler.schedule(() => {
                timedOut = true;
                abort.abort();
                // Do not wait for the SDK to notice the abort: the deadline is ours.
                subscriber.error(new PipelineError('timeout', `generateContent timed out after ${this.config.timeoutMs} ms`));
            }, this.config.timeoutMs);
            const capturingFetch = async (input, init) => {
                const response = await fetch(input, init);
                if (!response.ok)
                    retryAfterHeader = response.headers.get('retry-after');
                return response;
            };
            const call = async () => {
                const response = await this.client.generateContent(this.params(request, abort.signal, capturingFetch));
                const verdict = classifyGeminiResponse(response);
                if ('error' in verdict)
                    throw verdict.error;
                const bytes = Buffer.from(verdict.image.data, 'base64');
                const probe = await probeImage(bytes).catch((error) => {
                    throw new PipelineError('corrupt_image', `model returned an inline ${verdict.image.mimeType} part that is not an image (${bytes.byteLength} bytes)`, {
                        cause: error,
                    });
                });
                if (timedOut)
                    throw new PipelineError('timeout', 'generateContent timed out');
                return { bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), mimeType: probe.mimeType, usage: toTokenUsage(response.usageMetadata) };
            };
            call().then((image) => {
                timer.unsubscribe();
                subscriber.next(image);
                subscriber.complete();
            }, (error) => {
                timer.unsubscribe();
                // After an unsubscribe or our timeout the subscriber is closed and this is a no-op.
                subscriber.error(classifyGeminiError(error, { timedOut, retryAfterHeader, secrets: [this.config.apiKey] }));
            });
            return () => {
                timer.unsubscribe();
                abort.abort();
            };
        });
    }
    params(request, abortSignal, fetchFn) {
        const parts = [{ text: request.prompt }];
        if (request.input !== null)
            parts.push({ inlineData: { mimeType: request.input.mimeType, data: this.base64(request.input) } });
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
    base64(input) {
        let data = this.base64Cache.get(input);
        if (data === undefined) {
            data = Buffer.from(input.bytes.buffer, input.bytes.byteOffset, input.bytes.byteLength).toString('base64');
            this.base64Cache.set(input, data);
        }
        return data;
    }
}
/** Gemini `usageMetadata` -> {@link TokenUsage} (undefined when the answer has none). */
export function toTokenUsage(usage) {
    if (usage === undefined)
        return undefined;
    return { promptTokens: usage.promptTokenCount, outputTokens: usage.candidatesTokenCount, totalTokens: usage.totalTokenCount };
}
function sdkClient(apiKey, baseUrl) {
    // No `timeout` and no `retryOptions` here on purpose: the adapter owns the timeout
    // (so it can tell a timeout from an unsubscribe) and the engine owns retries.
    const ai = new GoogleGenAI({ apiKey, apiVersion: 'v1beta', httpOptions: baseUrl === undefined ? {} : { baseUrl } });
    return {
        generateContent: (params) => ai.models.generateContent({
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
