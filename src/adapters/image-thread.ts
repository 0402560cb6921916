/**
 * The image thread (a `worker_threads` entry): the per-image work that is not the main
 * thread's to do. The Gemini adapter runs here, so the SDK's request building, the HTTP
 * exchange, `JSON.parse` of a multi-megabyte answer, its base64 decode and the image's header
 * probe take none of the main thread's time; and so does the WebP conversion (sharp's option
 * parsing and its native call, ~0.8 ms of the main thread per image on this machine) (issue
 * 16, goal 2). The main side is {@link ImageThread} (`image-thread-link.ts`), used by
 * `ThreadedImageGenerator`, `ThreadedWebpCodec` and `FolderObjectStore` (its small writes: a
 * file's creation took 0.2-1.5 ms on this machine's disk).
 *
 * Loaded as compiled JavaScript (`dist/adapters/image-thread.js`); `workerData` is
 * {@link ImageThreadData}. The protocol, one message per step:
 *
 * ```
 * main -> thread   { op: 'input', inputId, bytes, mimeType }    a stage's input image, sent once
 *                  { op: 'forget', inputId }                     the main side dropped it
 *                  { op: 'generate', id, request, inputId }     one call (request: an AttemptRequest)
 *                  { op: 'abort', id }                           the caller unsubscribed
 *                  { op: 'webp', id, bytes, quality }            one conversion
 *                  { op: 'write', id, path, bytes }              a folder store's object (writeFileAtomicSync)
 *                  { op: 'webp-write', id, path, bytes, quality } a delivered image: toWebp, then written as 'write' writes
 * thread -> main   { id, image: { bytes, mimeType, usage } }     bytes' buffer transferred, not copied
 *                  { id, webp: WebpImage }                       the same
 *                  { id, written: true } | { id, fileError: { code, message } }
 *                  { id, stored: StoredWebp }                    'webp-write' done (the WebP's facts; its bytes stay here)
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
import { toWebp, type StoredWebp, type WebpImage } from './image-codec.js';
import { writeFileAtomicSync } from '../sinks/folder-object-store.js';

/** What the thread is started with: the Gemini adapter's settings (plain data: no client, no scheduler), when it generates. */
export interface ImageThreadData {
  readonly gemini?: Omit<GeminiImageGeneratorConfig, 'client' | 'scheduler'> | undefined;
}

/** A message to the thread. */
export type ImageThreadRequest =
  | { readonly op: 'input'; readonly inputId: number; readonly bytes: Uint8Array; readonly mimeType: string }
  | { readonly op: 'forget'; readonly inputId: number }
  | { readonly op: 'generate'; readonly id: number; readonly request: AttemptRequest; readonly inputId: number | null }
  | { readonly op: 'abort'; readonly id: number }
  | { readonly op: 'webp'; readonly id: number; readonly bytes: Uint8Array; readonly quality: number }
  | { readonly op: 'write'; readonly id: number; readonly path: string; readonly bytes: Uint8Array }
  | { readonly op: 'webp-write'; readonly id: number; readonly path: string; readonly bytes: Uint8Array; readonly quality: number };

/** A {@link PipelineError} as plain data. */
export interface PlainPipelineError {
  readonly errorClass: ErrorClass;
  readonly message: string;
  readonly retryAfterMs: number | undefined;
  readonly httpStatus: number | undefined;
  readonly usage: TokenUsage | undefined;
}

/** A message from the thread. */
export type ImageThreadAnswer =
  | { readonly id: number; readonly image: { readonly bytes: Uint8Array; readonly mimeType: string; readonly usage: TokenUsage | undefined } }
  | { readonly id: number; readonly webp: WebpImage }
  | { readonly id: number; readonly written: true }
  | { readonly id: number; readonly stored: StoredWebp }
  | { readonly id: number; readonly fileError: { readonly code: string | undefined; readonly message: string } }
  | { readonly id: number; readonly error: PlainPipelineError };

if (parentPort !== null) serve(parentPort, workerData as ImageThreadData);

function serve(port: NonNullable<typeof parentPort>, data: ImageThreadData): void {
  const generator = data.gemini === undefined ? undefined : new GeminiImageGenerator(data.gemini);
  const inputs = new Map<number, InputImage>();
  /** Folders made (or found) by this thread's writes. */
  const folders = new Set<string>();
  const calls = new Map<number, Subscription>();
  const answer = (message: ImageThreadAnswer, transfer: ArrayBuffer[] = []) => port.postMessage(message, transfer);
  const fail = (id: number, error: unknown, fallback?: ErrorClass) => answer({ id, error: plainError(toPipelineError(error, fallback)) });

  port.on('message', (message: ImageThreadRequest) => {
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
      case 'write': {
        const { id } = message;
        try {
          writeFileAtomicSync(message.path, message.bytes, folders);
          answer({ id, written: true });
        } catch (error) {
          answer({ id, fileError: fileErrorOf(error) });
        }
        return;
      }
      case 'webp-write': {
        const { id, path } = message;
        toWebp(message.bytes, { quality: message.quality }).then(
          ({ bytes, ...stored }) => {
            try {
              writeFileAtomicSync(path, bytes, folders);
              answer({ id, stored });
            } catch (error) {
              answer({ id, fileError: fileErrorOf(error) });
            }
          },
          (error: unknown) => fail(id, error, 'corrupt_image'),
        );
        return;
      }
      case 'webp': {
        const { id } = message;
        toWebp(message.bytes, { quality: message.quality }).then(
          (webp) => {
            const bytes = owned(webp.bytes);
            answer({ id, webp: { ...webp, bytes } }, [bytes.buffer as ArrayBuffer]);
          },
          (error: unknown) => fail(id, error, 'corrupt_image'),
        );
        return;
      }
      case 'generate': {
        const { id } = message;
        const input = message.inputId === null ? null : inputs.get(message.inputId);
        if (generator === undefined || input === undefined) {
          fail(id, new Error(generator === undefined ? 'the image thread has no provider' : `the image thread has no input image ${message.inputId}`), 'invalid_request');
          return;
        }
        const subscription = generator.generate({ ...message.request, input }).subscribe({
          next: (image) => {
            calls.delete(id);
            const bytes = owned(image.bytes);
            answer({ id, image: { bytes, mimeType: image.mimeType, usage: image.usage } }, [bytes.buffer as ArrayBuffer]);
          },
          error: (error: unknown) => {
            calls.delete(id);
            fail(id, error);
          },
        });
        if (!subscription.closed) calls.set(id, subscription);
        return;
      }
    }
  });
}

/** Bytes whose whole buffer can be handed over: the same view when it spans its buffer (a decode's or sharp's own), else a copy (never a pooled buffer). */
function owned(bytes: Uint8Array): Uint8Array {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer ? bytes : bytes.slice();
}

/** A file system error as plain data (its `code` kept). */
function fileErrorOf(error: unknown): { readonly code: string | undefined; readonly message: string } {
  const code = (error as { code?: unknown } | null)?.code;
  return { code: typeof code === 'string' ? code : undefined, message: error instanceof Error ? error.message : String(error) };
}

function plainError(error: PipelineError): PlainPipelineError {
  return { errorClass: error.errorClass, message: error.message, retryAfterMs: error.retryAfterMs, httpStatus: error.httpStatus, usage: error.usage };
}
