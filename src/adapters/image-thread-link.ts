import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { inspect } from 'node:util';
import { Worker } from 'node:worker_threads';
import { PipelineError } from '../domain/error-class.js';
import type { StoredWebp } from './image-codec.js';
import type { ImageThreadAnswer, ImageThreadData, ImageThreadRequest } from './image-thread.js';

/** The image thread's script beside this module, when it exists (it does once compiled: `dist/adapters/`). */
export function imageThreadEntry(): URL | undefined {
  const entry = new URL('./image-thread.js', import.meta.url);
  return existsSync(fileURLToPath(entry)) ? entry : undefined;
}

/** Settings of an {@link ImageThread}. */
export interface ImageThreadOptions extends ImageThreadData {
  /**
   * The thread's script: the compiled `image-thread.js`. Default: the one beside this module
   * (present once built; a program running our TypeScript sources passes the compiled one).
   */
  readonly entry?: URL | undefined;
}

/** How a request's answer is taken: an answer of the thread, or the error of a thread that ended. */
export type AnswerHandler = (answer: ImageThreadAnswer | PipelineError) => void;

/**
 * The main side of the image thread (`image-thread.ts`): requests out, answers back to the
 * handler each request named. What `ThreadedImageGenerator` and `ThreadedWebpCodec` share,
 * so one thread serves both (one more JavaScript heap in the process, not two).
 *
 * - The thread starts with the first request and keeps the process alive only while a
 *   request is outstanding.
 * - A thread that dies fails every outstanding request as `network` (retryable: the engine's
 *   budget decides); the next request starts a new thread ({@link generation} counts them).
 * - `workerData` may hold the provider's key: it crosses to the thread at its start and is
 *   never printed (this object prints as its settings without it: `toJSON`, `inspect`).
 *
 * @example
 * const thread = new ImageThread({ gemini: { apiKey } });
 * const generator = new ThreadedImageGenerator({ thread });
 * const codec = new ThreadedWebpCodec(thread);
 * await thread.close();
 */
export class ImageThread {
  readonly #data: ImageThreadData;
  readonly #entry: URL;
  #worker: Worker | null = null;
  #generation = 0;
  #closed = false;
  #nextId = 1;
  readonly #pending = new Map<number, AnswerHandler>();

  constructor(options: ImageThreadOptions = {}) {
    const { entry, ...data } = options;
    const resolved = entry ?? imageThreadEntry();
    if (resolved === undefined || (resolved.protocol === 'file:' && !existsSync(fileURLToPath(resolved)))) {
      throw new Error(`ImageThread: the thread's script ${fileURLToPath(resolved ?? new URL('./image-thread.js', import.meta.url))} does not exist (it is compiled JavaScript: run \`npm run build\`)`);
    }
    this.#entry = resolved;
    this.#data = data.gemini === undefined ? {} : { gemini: { ...data.gemini } };
  }

  /** Whether the thread was started with a provider (it can `generate`). */
  get generates(): boolean {
    return this.#data.gemini !== undefined;
  }

  /** The provider's settings the thread runs with, without the key (for printing). */
  get printable(): { readonly model?: string | undefined; readonly baseUrl?: string | undefined; readonly timeoutMs?: number | undefined } {
    const gemini = this.#data.gemini;
    return gemini === undefined ? {} : { model: gemini.model, baseUrl: gemini.baseUrl, timeoutMs: gemini.timeoutMs };
  }

  /** Threads started so far: a request made in a new generation finds none of the earlier one's state (input images). */
  get generation(): number {
    return this.#generation;
  }

  /** A new request id. */
  nextId(): number {
    return this.#nextId++;
  }

  /**
   * Sends `message` (a request carrying `id`; its bytes are copied), its answer to `handler`.
   * A closed thread answers at once with `cancelled`.
   */
  request(id: number, message: ImageThreadRequest, handler: AnswerHandler): void {
    if (this.#closed) {
      handler(new PipelineError('cancelled', 'the image thread is closed'));
      return;
    }
    const worker = this.#thread();
    if (this.#pending.size === 0) worker.ref();
    this.#pending.set(id, handler);
    worker.postMessage(message);
  }

  /** Stops waiting for `id`'s answer; true when it was outstanding. */
  forget(id: number): boolean {
    if (!this.#pending.delete(id)) return false;
    this.#idleCheck();
    return true;
  }

  /** Starts the thread if none runs (and it is not closed), so {@link generation} is the one the next message reaches. */
  start(): void {
    if (!this.#closed) this.#thread();
  }

  /** A message that expects no answer (`abort`, `input`, `forget`), to the running thread; none runs: dropped. */
  post(message: ImageThreadRequest): void {
    this.#worker?.postMessage(message);
  }

  /**
   * A folder store's small object, written in the thread (`writeFileAtomicSync`): the
   * `ObjectFileWriter` of `FolderObjectStore`. Rejects with the file system's error (its
   * `code` kept), or an error saying the thread ended.
   */
  writeFile(path: string, bytes: Uint8Array): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const id = this.nextId();
      this.request(id, { op: 'write', id, path, bytes }, (answer) => {
        if (answer instanceof PipelineError) reject(new Error(answer.message));
        else if ('fileError' in answer) reject(Object.assign(new Error(answer.fileError.message), answer.fileError.code === undefined ? {} : { code: answer.fileError.code }));
        else resolve();
      });
    });
  }

  /**
   * A delivered image converted to WebP (`toWebp`) and written as {@link writeFile} writes, in
   * one step in the thread: the `writeWebpFile` of `FolderObjectStore`'s writer (its `putWebp`).
   * The image is copied to the thread; the WebP stays there. Rejects with the conversion's
   * `corrupt_image` {@link PipelineError}, the file system's error (its `code` kept), or an error
   * saying the thread ended.
   */
  writeWebpFile(path: string, image: Uint8Array, quality: number): Promise<StoredWebp> {
    return new Promise<StoredWebp>((resolve, reject) => {
      const id = this.nextId();
      this.request(id, { op: 'webp-write', id, path, bytes: image, quality }, (answer) => {
        if (answer instanceof PipelineError) reject(new Error(answer.message));
        else if ('fileError' in answer) reject(Object.assign(new Error(answer.fileError.message), answer.fileError.code === undefined ? {} : { code: answer.fileError.code }));
        else if ('stored' in answer) resolve(answer.stored);
        else reject(pipelineErrorOf(answer) ?? new Error('the image thread answered a conversion with something else'));
      });
    });
  }

  /** What JSON.stringify and pino print: the settings, never the key. */
  toJSON(): unknown {
    return { ...this.printable, generates: this.generates };
  }

  /** What `console.log(thread)` prints: the settings, never the key. */
  [inspect.custom](): string {
    return `ImageThread ${inspect(this.toJSON())}`;
  }

  /**
   * Ends the thread; requests still outstanding and later ones fail `cancelled` (none is left
   * waiting for an answer that cannot come). Idempotent.
   */
  async close(): Promise<void> {
    this.#closed = true;
    const worker = this.#worker;
    this.#worker = null;
    const handlers = [...this.#pending.values()];
    this.#pending.clear();
    for (const handler of handlers) handler(new PipelineError('cancelled', 'the image thread is closed'));
    if (worker !== null) {
      worker.ref();
      await worker.terminate();
    }
  }

  #thread(): Worker {
    if (this.#worker !== null) return this.#worker;
    const worker = new Worker(this.#entry, { workerData: this.#data });
    worker.unref();
    this.#worker = worker;
    this.#generation++;
    worker.on('message', (answer: ImageThreadAnswer) => {
      const handler = this.#pending.get(answer.id);
      if (handler === undefined) return;
      this.#pending.delete(answer.id);
      this.#idleCheck();
      handler(answer);
    });
    const ended = (reason: string) => {
      if (this.#worker !== worker) return;
      this.#worker = null;
      const handlers = [...this.#pending.values()];
      this.#pending.clear();
      for (const handler of handlers) handler(new PipelineError('network', `the image thread ended (${reason})`));
    };
    worker.on('error', (error: Error) => ended(error.message));
    worker.on('exit', (code) => ended(`exit code ${code}`));
    return worker;
  }

  #idleCheck(): void {
    if (this.#pending.size === 0) this.#worker?.unref();
  }
}

/** A thread's error answer as the {@link PipelineError} it was. */
export function pipelineErrorOf(answer: ImageThreadAnswer | PipelineError): PipelineError | undefined {
  if (answer instanceof PipelineError) return answer;
  if (!('error' in answer)) return undefined;
  const { errorClass, message, retryAfterMs, httpStatus, usage } = answer.error;
  return new PipelineError(errorClass, message, { retryAfterMs, httpStatus, usage });
}
