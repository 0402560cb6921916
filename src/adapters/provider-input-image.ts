import { PipelineError } from '../domain/error-class.js';
import type { InputImage } from '../domain/ports.js';
import { DEFAULT_MAX_PIXELS, loadSharp } from './image-codec.js';

/** The input image types Gemini documents (`inlineData.mimeType`); anything else is converted. */
export const PROVIDER_INPUT_MIME_TYPES: readonly string[] = Object.freeze(['image/png', 'image/jpeg', 'image/webp', 'image/heic', 'image/heif']);

/**
 * Largest input image sent to the provider, in bytes: 13 MiB (13,631,488 bytes) is
 * 18,175,320 characters of base64, which leaves about 1.8 MB of Gemini's 20 MB inline
 * request limit (prompt, at most 10,000 characters, and the JSON around it) unused.
 * A larger input is downscaled until it fits.
 */
export const MAX_PROVIDER_INPUT_BYTES = 13 * 1024 * 1024;

/** Options of {@link toProviderInputImage}. */
export interface ProviderInputOptions {
  /** Byte budget of the image sent. Default {@link MAX_PROVIDER_INPUT_BYTES}. */
  readonly maxBytes?: number;
}

/** The image the provider gets, and whether it differs from the stored original. */
export interface ProviderInputImage extends InputImage {
  readonly converted: boolean;
}

/** How many times the size is cut before giving up (each cut aims 10% under the budget). */
const MAX_DOWNSCALES = 8;

/**
 * The form of an input image the provider takes: the original when it is PNG, JPEG,
 * WebP or HEIC/HEIF and within `maxBytes`; otherwise a converted copy (GIF, AVIF, TIFF,
 * SVG, or too large), EXIF orientation applied, downscaled until it fits:
 *
 * - JPEG (quality 90) for a photo: a lossy source (JPEG, AVIF, HEIF) without alpha;
 * - PNG for everything else (graphics, transparency; a GIF's first frame).
 *
 * The type is read from the bytes (sharp's header read), not from the stored content
 * type: an AVIF was stored as `image/heif` by older imports. Throws
 * `PipelineError('invalid_request')` when the image cannot be read or made small enough:
 * another attempt would fail the same way.
 *
 * @example
 * const sent = await toProviderInputImage(gifBytes); // { mimeType: 'image/png', converted: true, ... }
 */
export async function toProviderInputImage(bytes: Uint8Array, options: ProviderInputOptions = {}): Promise<ProviderInputImage> {
  const maxBytes = options.maxBytes ?? MAX_PROVIDER_INPUT_BYTES;
  const sharp = await loadSharp();
  const open = () => sharp(bytes, { failOn: 'error', limitInputPixels: DEFAULT_MAX_PIXELS });
  const meta = await open()
    .metadata()
    .catch((error: unknown) => {
      throw new PipelineError('invalid_request', `the input image does not read (${bytes.byteLength} bytes): ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    });
  const heif = meta.format === 'heif' ? (meta.compression === 'av1' ? 'avif' : 'heic') : undefined;
  const mimeType = heif === 'heic' ? 'image/heic' : meta.format === 'jpeg' ? 'image/jpeg' : meta.format === 'png' ? 'image/png' : meta.format === 'webp' ? 'image/webp' : undefined;
  if (mimeType !== undefined && bytes.byteLength <= maxBytes) return { bytes, mimeType, converted: false };

  const photo = meta.hasAlpha !== true && (meta.format === 'jpeg' || meta.format === 'heif');
  const longSide = Math.max(meta.width ?? 0, meta.height ?? 0, 1);
  let scale = 1;
  for (let tries = 0; tries <= MAX_DOWNSCALES; tries++) {
    let pipeline = open().rotate();
    if (scale < 1) {
      const side = Math.max(1, Math.floor(longSide * scale));
      pipeline = pipeline.resize(side, side, { fit: 'inside', withoutEnlargement: true });
    }
    const out = await (photo ? pipeline.jpeg({ quality: 90 }) : pipeline.png()).toBuffer().catch((error: unknown) => {
      throw new PipelineError('invalid_request', `the input image does not convert (${bytes.byteLength} bytes): ${error instanceof Error ? error.message : String(error)}`, { cause: error });
    });
    if (out.byteLength <= maxBytes) {
      return { bytes: new Uint8Array(out.buffer, out.byteOffset, out.byteLength), mimeType: photo ? 'image/jpeg' : 'image/png', converted: true };
    }
    // Encoded size grows with the pixel count: aim 10% under the budget.
    scale *= Math.sqrt(maxBytes / out.byteLength) * 0.9;
  }
  throw new PipelineError('invalid_request', `the input image does not fit in ${maxBytes} bytes after ${MAX_DOWNSCALES} downscales`);
}
