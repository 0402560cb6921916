import { inspect } from 'node:util';
import { Observable } from 'rxjs';
import { DEFAULT_GEMINI_IMAGE_MODEL } from '../domain/models.js';
import type { GeneratedImage, GenerationRequest, ImageGenerator, InputImage } from '../domain/ports.js';
import type { GeminiImageGeneratorConfig } from './gemini-image-generator.js';
import { ImageThread, pipelineErrorOf } from './image-thread-link.js';

/** Configuration of a {@link ThreadedImageGenerator}: a thread of its own, or one it shares. */
export type ThreadedImageGeneratorConfig =
  | {
      /** The Gemini adapter's settings (plain data: no client, no scheduler). */
      readonly gemini: Omit<GeminiImageGeneratorConfig, 'client' | 'scheduler'>;
      /** The thread's script (see {@link ImageThread}); default: the compiled one beside the module. */
      readonly entry?: URL | undefined;
    }
  | {
      /** A thread started with the provider's settings, shared (e.g. with `ThreadedWebpCodec`); its owner closes it. */
      readonly thread: ImageThread;
    };

/**
 * The Gemini adapter ({@link GeminiImageGenerator}) in the image thread (`image-thread.ts`):
 * the same {@link ImageGenerator}, the same requests, answers and classified failures, with
 * the provider call's work off the main thread. What the main thread keeps per call: one
 * message each way. The answer's image bytes come over without a copy (their buffer is
 * transferred); a stage's input image is sent to the thread once, not with every call, and
 * dropped there when the main side lets it go.
 *
 * - Cold: nothing is sent until subscription. Unsubscribing aborts the call in the thread
 *   (its HTTP request too) and emits nothing.
 * - The timeout is the adapter's own (`gemini.timeoutMs`), run in the thread.
 * - A thread that dies fails the calls in flight as `network` (retryable: the engine's budget
 *   decides); the next call starts a new one ({@link ImageThread}).
 * - The key crosses to the thread at its start; it is never printed (`toJSON`, `inspect`).
 *
 * @example
 * const gemini = new ThreadedImageGenerator({ gemini: { apiKey, baseUrl } });
 * gemini.generate(request).subscribe(...); // as GeminiImageGenerator
 * await gemini.close();                    // ends its thread
 */
export class ThreadedImageGenerator implements ImageGenerator {
  readonly model: string;
  readonly #thread: ImageThread;
  /** Whether the thread is this generator's own (closed with it). */
  readonly #owned: boolean;
  /** Each input image's id, and the ids the current thread holds (its generation's). */
  readonly #inputIds = new WeakMap<InputImage, number>();
  #inputsSent = new Set<number>();
  #inputsGeneration = -1;
  /** An input image the main side let go of is dropped in the thread too. */
  readonly #inputsGone = new FinalizationRegistry<number>((inputId) => {
    if (this.#inputsSent.delete(inputId)) this.#thread.post({ op: 'forget', inputId });
  });

  constructor(config: ThreadedImageGeneratorConfig) {
    if ('thread' in config) {
      if (!config.thread.generates) throw new Error('ThreadedImageGenerator: the thread was started without a provider (gemini settings)');
      this.#thread = config.thread;
      this.#owned = false;
    } else {
      if (!config.gemini.apiKey && !config.gemini.vertex) throw new Error('ThreadedImageGenerator: gemini.apiKey (or gemini.vertex) is required');
      this.#thread = new ImageThread({ gemini: config.gemini, entry: config.entry });
      this.#owned = true;
    }
    this.model = this.#thread.printable.model ?? DEFAULT_GEMINI_IMAGE_MODEL;
  }

  generate(request: GenerationRequest): Observable<GeneratedImage> {
    return new Observable<GeneratedImage>((subscriber) => {
      const id = this.#thread.nextId();
      const { input, ...attempt } = request;
      const inputId = input === null ? null : this.#inputIdOf(input);
      this.#thread.request(id, { op: 'generate', id, request: attempt, inputId }, (answer) => {
        const error = pipelineErrorOf(answer);
        if (error !== undefined) return subscriber.error(error);
        if ('image' in answer) {
          const { bytes, mimeType, usage } = answer.image;
          subscriber.next({ bytes, mimeType, usage });
          subscriber.complete();
        }
      });
      return () => {
        if (this.#thread.forget(id)) this.#thread.post({ op: 'abort', id });
      };
    });
  }

  /** Ends its own thread (a shared one is its owner's to close); later calls fail `cancelled`. Idempotent. */
  async close(): Promise<void> {
    if (this.#owned) await this.#thread.close();
  }

  /** What JSON.stringify and pino print: the settings, never the key. */
  toJSON(): unknown {
    const { baseUrl, timeoutMs } = this.#thread.printable;
    return { model: this.model, baseUrl, timeoutMs, thread: true };
  }

  /** What `console.log(generator)` prints: the settings, never the key. */
  [inspect.custom](): string {
    return `ThreadedImageGenerator ${inspect(this.toJSON())}`;
  }

  /** The input's id in the thread, sending the image first if the thread does not hold it. */
  #inputIdOf(input: InputImage): number {
    let inputId = this.#inputIds.get(input);
    if (inputId === undefined) {
      inputId = this.#thread.nextId();
      this.#inputIds.set(input, inputId);
      this.#inputsGone.register(input, inputId);
    }
    // The thread holds the inputs sent to it: a new thread (after one died) holds none.
    this.#thread.start();
    if (this.#inputsGeneration !== this.#thread.generation) {
      this.#inputsGeneration = this.#thread.generation;
      this.#inputsSent = new Set();
    }
    if (!this.#inputsSent.has(inputId)) {
      this.#thread.post({ op: 'input', inputId, bytes: input.bytes, mimeType: input.mimeType });
      this.#inputsSent.add(inputId);
    }
    return inputId;
  }
}
