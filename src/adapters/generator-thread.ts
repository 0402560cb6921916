/**
 * The provider's own thread (a `worker_threads` entry): the Gemini adapter runs here, so the
 * SDK's request building, the HTTP exchange, `JSON.parse` of a multi-megabyte answer, its
 * base64 decode and the image's header probe take none of the main thread's time (issue 16,
 * goal 2). The main side is {@link ThreadedImageGenerator} (`threaded-image-generator.ts`).
 *
 * Loaded as compiled JavaScript (`dist/adapters/generator-thread.js`); `workerData` is
 * {@link GeneratorThreadData}. The protocol, one message per step:
 *
 * ```
 * main -> thread   { op: 'input', inputId, bytes, mimeType }    a stage's input image, sent once
 *                  { op: 'forget', inputId }                     the main side dropped it
 *                  { op: 'generate', id, request, inputId }     one call (request: an AttemptRequest)
 *                  { op: 'abort', id }                           the caller unsubscribed
 * thread -> main   { id, image: { bytes, mimeType, usage } }     bytes' buffer transferred, not copied
 *                  { id, error: { errorClass, message, retryAfterMs, httpStatus, usage } }
 * ```
 *
 * An aborted call answers nothing. Errors are {@link PipelineError}s, already classified and
 * with every secret masked by the adapter; they cross as their fields.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Subscription } from 'rxjs';
import { toPipelineError, type ErrorClass, type PipelineError } from '../domain/error-class.js';
import type { AttemptRequest, InputImage, TokenUsage } from '../domain/ports.js';
import { GeminiImageGenerator, type GeminiImageGeneratorConfig } from './gemini-image-generator.js';

/** What the thread is started with: the adapter's settings (plain data: no client, no scheduler). */
export interface GeneratorThreadData {
  readonly gemini: Omit<GeminiImageGeneratorConfig, 'client' | 'scheduler'>;
}

/** A message to the thread. */
export type GeneratorThreadRequest =
  | { readonly op: 'input'; readonly inputId: number; readonly bytes: Uint8Array; readonly mimeType: string }
  | { readonly op: 'forget'; readonly inputId: number }
  | { readonly op: 'generate'; readonly id: number; readonly request: AttemptRequest; readonly inputId: number | null }
  | { readonly op: 'abort'; readonly id: number };

/** A {@link PipelineError} as plain data. */
export interface PlainPipelineError {
  readonly errorClass: ErrorClass;
  readonly message: string;
  readonly retryAfterMs: number | undefined;
  readonly httpStatus: number | undefined;
  readonly usage: TokenUsage | undefined;
}

/** A message from the thread. */
export type GeneratorThreadAnswer =
  | { readonly id: number; readonly image: { readonly bytes: Uint8Array; readonly mimeType: string; readonly usage: TokenUsage | undefined } }
  | { readonly id: number; readonly error: PlainPipelineError };

if (parentPort !== null) serve(parentPort, workerData as GeneratorThreadData);

function serve(port: NonNullable<typeof parentPort>, data: GeneratorThreadData): void {
  const generator = new GeminiImageGenerator(data.gemini);
  const inputs = new Map<number, InputImage>();
  const calls = new Map<number, Subscription>();
  const answer = (message: GeneratorThreadAnswer, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);

  port.on('message', (message: GeneratorThreadRequest) => {
    switch (message.op) {
      case 'input':
        inputs.set(message.inputId, { bytes: message.bytes, mimeType: message.mimeType });
        return;
      case 'forget':
        inputs.delete(message.inputId);
        return;
      case 'abort':
        calls.get(message.id)?.unsubscribe();
        calls.delete(message.id);
        return;
      case 'generate': {
        const { id } = message;
        const input = message.inputId === null ? null : inputs.get(message.inputId);
        if (input === undefined) {
          answer({ id, error: plainError(toPipelineError(new Error(`the provider thread has no input image ${message.inputId}`), 'invalid_request')) });
          return;
        }
        const subscription = generator.generate({ ...message.request, input }).subscribe({
          next: (image) => {
            calls.delete(id);
            // The answer's bytes are a view of a buffer of their own (a base64 decode): hand it over.
            const { bytes } = image;
            const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
            const sent = whole ? bytes : bytes.slice();
            answer({ id, image: { bytes: sent, mimeType: image.mimeType, usage: image.usage } }, [sent.buffer as ArrayBuffer]);
          },
          error: (error: unknown) => {
            calls.delete(id);
            answer({ id, error: plainError(toPipelineError(error)) });
          },
        });
        if (!subscription.closed) calls.set(id, subscription);
        return;
      }
    }
  });
}

function plainError(error: PipelineError): PlainPipelineError {
  return { errorClass: error.errorClass, message: error.message, retryAfterMs: error.retryAfterMs, httpStatus: error.httpStatus, usage: error.usage };
}
