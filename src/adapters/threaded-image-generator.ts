import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { Worker } from 'node:worker_threads';
import { Observable, type Subscriber } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import { DEFAULT_GEMINI_IMAGE_MODEL } from '../domain/models.js';
import type { GeneratedImage, GenerationRequest, ImageGenerator, InputImage } from '../domain/ports.js';
import type { GeneratorThreadAnswer, GeneratorThreadData, GeneratorThreadRequest } from './generator-thread.js';

/** Configuration of a {@link ThreadedImageGenerator}. */
export interface ThreadedImageGeneratorConfig extends GeneratorThreadData {
  /**
   * The thread's script: the compiled `generator-thread.js`. Default: the one beside this
   * module (present once built; a program running our TypeScript sources passes the
   * compiled one, or uses {@link GeminiImageGenerator} in its own thread).
   */
  readonly entry?: URL;
}

/** The thread's script beside this module, when it exists (it does once compiled: `dist/adapters/`). */
export function generatorThreadEntry(): URL | undefined {
  const entry = new URL('./generator-thread.js', import.meta.url);
  return existsSync(fileURLToPath(entry)) ? entry : undefined;
}

/**
 * The Gemini adapter ({@link GeminiImageGenerator}) in a thread of its own
 * (`generator-thread.ts`): the same {@link ImageGenerator}, the same requests, answers and
 * classified failures, with the provider call's work off the main thread. What the main
 * thread keeps per call: one message each way. The answer's image bytes come over without a
 * copy (their buffer is transferred); a stage's input image is sent to the thread once, not
 * with every call, and dropped there when the main side lets it go.
 *
 * - Cold: nothing is sent until subscription. Unsubscribing aborts the call in the thread
 *   (its HTTP request too) and emits nothing.
 * - The timeout is the adapter's own (`gemini.timeoutMs`), run in the thread.
 * - The thread starts on the first call and keeps the process alive only while a call is in
 *   flight. A thread that dies fails the calls in flight as `network` (retryable: the engine's
 *   budget decides) and the next call starts a new one.
 * - The key crosses to the thread at its start; it is never printed (`toJSON`, `inspect`).
 *
 * @example
 * const gemini = new ThreadedImageGenerator({ gemini: { apiKey, baseUrl } });
 * gemini.generate(request).subscribe(...); // as GeminiImageGenerator
 * await gemini.close();                    // ends the thread
 */
export class ThreadedImageGenerator implements ImageGenerator {
  readonly model: string;
  readonly #data: GeneratorThreadData;
  readonly #entry: URL;
  #worker: Worker | null = null;
  #closed = false;
  #nextId = 1;
  readonly #pending = new Map<number, Subscriber<GeneratedImage>>();
  /** Each input image's id, and the ids the current thread holds. */
  readonly #inputIds = new WeakMap<InputImage, number>();
  #inputsSent = new Set<number>();
  /** An input image the main side let go of is dropped in the thread too. */
  readonly #inputsGone = new FinalizationRegistry<number>((inputId) => {
    if (this.#inputsSent.delete(inputId)) this.#post({ op: 'forget', inputId });
  });

  constructor(config: ThreadedImageGeneratorConfig) {
    const { entry, ...data } = config;
    if (!data.gemini.apiKey && !data.gemini.vertex) throw new Error('ThreadedImageGenerator: gemini.apiKey (or gemini.vertex) is required');
    const resolved = entry ?? generatorThreadEntry();
    if (resolved === undefined || (resolved.protocol === 'file:' && !existsSync(fileURLToPath(resolved)))) {
      throw new Error(`ThreadedImageGenerator: the thread's script ${fileURLToPath(resolved ?? new URL('./generator-thread.js', import.meta.url))} does not exist (it is compiled JavaScript: run \`npm run build\`)`);
    }
    this.#entry = resolved;
    this.#data = { gemini: { ...data.gemini } };
    this.model = data.gemini.model ?? DEFAULT_GEMINI_IMAGE_MODEL;
  }

  generate(request: GenerationRequest): Observable<GeneratedImage> {
    return new Observable<GeneratedImage>((subscriber) => {
      if (this.#closed) {
        subscriber.error(new PipelineError('cancelled', 'the generator is closed'));
        return;
      }
      const worker = this.#thread();
      const id = this.#nextId++;
      const { input, ...attempt } = request;
      const inputId = input === null ? null : this.#inputIdOf(input);
      if (this.#pending.size === 0) worker.ref();
      this.#pending.set(id, subscriber);
      this.#post({ op: 'generate', id, request: attempt, inputId });
      return () => {
        if (!this.#pending.delete(id)) return;
        this.#idleCheck();
        this.#post({ op: 'abort', id });
      };
    });
  }

  /** Ends the thread; later calls fail `cancelled`. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = null;
    if (worker !== null) await worker.terminate();
  }

  /** What JSON.stringify and pino print: the settings, never the key. */
  toJSON(): unknown {
    return { model: this.model, baseUrl: this.#data.gemini.baseUrl, timeoutMs: this.#data.gemini.timeoutMs, thread: true };
  }

  /** What `console.log(generator)` prints: the settings, never the key. */
  [inspect.custom](): string {
    return `ThreadedImageGenerator ${inspect(this.toJSON())}`;
  }

  #thread(): Worker {
    if (this.#worker !== null) return this.#worker;
    const worker = new Worker(this.#entry, { workerData: this.#data });
    worker.unref();
    this.#worker = worker;
    this.#inputsSent = new Set();
    worker.on('message', (message: GeneratorThreadAnswer) => {
      const subscriber = this.#pending.get(message.id);
      if (subscriber === undefined) return;
      this.#pending.delete(message.id);
      this.#idleCheck();
      if ('error' in message) {
        const { errorClass, message: text, retryAfterMs, httpStatus, usage } = message.error;
        subscriber.error(new PipelineError(errorClass, text, { retryAfterMs, httpStatus, usage }));
        return;
      }
      const { bytes, mimeType, usage } = message.image;
      subscriber.next({ bytes, mimeType, usage });
      subscriber.complete();
    });
    const ended = (reason: string) => {
      if (this.#worker !== worker) return;
      this.#worker = null;
      const failed = [...this.#pending.values()];
      this.#pending.clear();
      for (const subscriber of failed) subscriber.error(new PipelineError('network', `the provider's thread ended (${reason})`));
    };
    worker.on('error', (error: Error) => ended(error.message));
    worker.on('exit', (code) => ended(`exit code ${code}`));
    return worker;
  }

  /** The input's id in the thread, sending the image first if the thread does not hold it. */
  #inputIdOf(input: InputImage): number {
    let inputId = this.#inputIds.get(input);
    if (inputId === undefined) {
      inputId = this.#nextId++;
      this.#inputIds.set(input, inputId);
      this.#inputsGone.register(input, inputId);
    }
    if (!this.#inputsSent.has(inputId)) {
      this.#post({ op: 'input', inputId, bytes: input.bytes, mimeType: input.mimeType });
      this.#inputsSent.add(inputId);
    }
    return inputId;
  }

  #idleCheck(): void {
    if (this.#pending.size === 0) this.#worker?.unref();
  }

  #post(message: GeneratorThreadRequest): void {
    this.#worker?.postMessage(message);
  }
}
