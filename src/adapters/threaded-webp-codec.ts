import { DEFAULT_WEBP_QUALITY, type WebpCodec, type WebpImage } from './image-codec.js';
import { pipelineErrorOf, type ImageThread } from './image-thread-link.js';

/**
 * `toWebp` in the image thread (`image-thread.ts`): the same validation and conversion
 * (sharp), the same `corrupt_image` failures, with sharp's calls off the main thread. The
 * bytes are copied to the thread (the caller keeps its own); the WebP comes back without a
 * copy. A thread that dies fails the conversions in flight as `network`.
 *
 * @example
 * const codec = new ThreadedWebpCodec(thread);
 * const webp = await codec.toWebp(pngBytes, { quality: 80 });
 */
export class ThreadedWebpCodec implements WebpCodec {
  readonly #thread: ImageThread;

  constructor(thread: ImageThread) {
    this.#thread = thread;
  }

  toWebp(bytes: Uint8Array, options: { readonly quality?: number | undefined } = {}): Promise<WebpImage> {
    return new Promise<WebpImage>((resolve, reject) => {
      const id = this.#thread.nextId();
      this.#thread.request(id, { op: 'webp', id, bytes, quality: options.quality ?? DEFAULT_WEBP_QUALITY }, (answer) => {
        const error = pipelineErrorOf(answer);
        if (error !== undefined) reject(error);
        else if ('webp' in answer) resolve(answer.webp);
      });
    });
  }

  /** Prints as what it is. */
  toJSON(): unknown {
    return { codec: 'webp', thread: true };
  }
}
