import type sharpModule from 'sharp';
import { crc32 } from 'node:zlib';

type Sharp = typeof sharpModule;
let sharpLoaded: Promise<Sharp> | undefined;
let operationCacheOff = false;
/**
 * sharp (libvips) takes a noticeable share of a CLI start: it is loaded on first use,
 * so commands that never touch an image (`status`, `credits`, `stats`) do not pay for it.
 */
export function loadSharp(): Promise<Sharp> {
  sharpLoaded ??= import('sharp').then((m) => {
    if (operationCacheOff) m.default.cache(false);
    return m.default;
  });
  return sharpLoaded;
}

/**
 * Turns libvips' operation cache off (`sharp.cache(false)`) for this process. The cache keeps
 * the results of recent operations (up to 50 MB by default) for a repeat of the same one; a
 * pipeline converts every image once, so there it only holds memory (figure 11 of
 * BENCHMARKS.md). sharp's settings are process-wide: the project's own programs (the CLI,
 * the worker, the demo) call this; the library never does, so a host's sharp keeps its cache.
 */
export function turnSharpOperationCacheOff(): void {
  operationCacheOff = true;
  void sharpLoaded?.then((sharp) => sharp.cache(false));
}
import { PipelineError } from '../domain/error-class.js';

/** Per-call options of {@link toWebp}. */
export interface ToWebpOptions {
  /** WebP quality, 1..100. Default 80. */
  readonly quality?: number;
  /** Refuse inputs larger than this many bytes before decoding. Default 20 MiB. */
  readonly maxInputBytes?: number;
  /** Refuse images with more pixels than this (width x height). Default 50 000 000. */
  readonly maxPixels?: number;
}

/** A WebP image produced by {@link toWebp}. */
export interface WebpImage {
  readonly bytes: Uint8Array;
  readonly width: number;
  readonly height: number;
  readonly byteSize: number;
  readonly contentType: 'image/webp';
}

/** A stored WebP's facts without its bytes (what `ObjectStore.putWebp` answers). */
export type StoredWebp = Omit<WebpImage, 'bytes'>;

/** The WebP conversion a delivery uses: {@link toWebp} in the calling thread (the default), or `ThreadedWebpCodec` in the image thread. */
export interface WebpCodec {
  toWebp(bytes: Uint8Array, options?: { readonly quality?: number | undefined }): Promise<WebpImage>;
}

/** What {@link probeImage} learned about an image without decoding its pixels. */
export interface ImageProbe {
  readonly mimeType: string;
  readonly width: number;
  readonly height: number;
}

/** Default input size limit of {@link toWebp}: 20 MiB. */
export const DEFAULT_MAX_INPUT_BYTES = 20 * 1024 * 1024;
/** Default pixel limit of {@link toWebp} (about a 7000 x 7000 image). */
export const DEFAULT_MAX_PIXELS = 50_000_000;
/** Default WebP quality of {@link toWebp}. */
export const DEFAULT_WEBP_QUALITY = 80;

const MIME_BY_FORMAT: Readonly<Record<string, string>> = Object.freeze({
  png: 'image/png',
  jpeg: 'image/jpeg',
  jpg: 'image/jpeg',
  webp: 'image/webp',
  gif: 'image/gif',
  avif: 'image/avif',
  heif: 'image/heif',
  tiff: 'image/tiff',
  svg: 'image/svg+xml',
});

/**
 * Reads an image's format and dimensions from its header (cheap: no full decode).
 *
 * Used to validate user input images and generator output before paying for a full
 * decode. Throws `PipelineError('corrupt_image')` when the bytes are not an image
 * sharp recognises or have no dimensions. The message never contains the bytes.
 *
 * @example
 * const { mimeType, width, height } = await probeImage(bytes);
 */
export async function probeImage(bytes: Uint8Array): Promise<ImageProbe> {
  if (bytes.byteLength === 0) throw new PipelineError('corrupt_image', 'image is empty (0 bytes)');
  const png = pngHeader(bytes);
  if (png) return png;
  const meta = await (await loadSharp())(bytes, { failOn: 'error' })
    .metadata()
    .catch((error: unknown) => {
      throw new PipelineError('corrupt_image', `bytes do not decode as an image (${bytes.byteLength} bytes): ${errorText(error)}`, {
        cause: error,
      });
    });
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  // sharp (libheif) reports AVIF as format `heif` with AV1 compression.
  const mimeType = meta.format === 'heif' && meta.compression === 'av1' ? 'image/avif' : MIME_BY_FORMAT[meta.format ?? ''];
  if (mimeType === undefined || width <= 0 || height <= 0) {
    throw new PipelineError('corrupt_image', `unsupported or empty image (format ${String(meta.format)}, ${width}x${height})`);
  }
  return { mimeType, width, height };
}

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a] as const;
const PNG_BIT_DEPTHS: Readonly<Record<number, readonly number[]>> = { 0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16] };
const PNG_IHDR = 0x49484452;
const PNG_IDAT = 0x49444154;
/** The largest side {@link pngHeader} answers for; a larger one goes to sharp, whose limits decide. */
const PNG_HEADER_MAX_SIDE = 65_535;

/**
 * A PNG's format and dimensions, read here from its chunks; null when the bytes are not a PNG
 * this reads with certainty, and then {@link probeImage} asks sharp. Read: the signature, a
 * well-formed IHDR first (length 13, a valid bit depth and colour type, interlace 0 or 1, each
 * side 1..65535), every chunk after it whole with a matching CRC, up to the header of the first
 * IDAT, which must be there: what sharp's `metadata()` needs of a PNG too (a file cut before its
 * first IDAT is no image to it). The answer is the one `metadata()` gives for these bytes,
 * without a libvips call: a delivered image was probed twice (the provider's answer, then
 * before WebP), a few hundred microseconds of the main thread and a thread-pool task each time
 * (BENCHMARKS.md 11D).
 */
export function pngHeader(bytes: Uint8Array): ImageProbe | null {
  if (bytes.byteLength < 33 || PNG_SIGNATURE.some((b, i) => bytes[i] !== b)) return null;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // IHDR: length 13, type, width, height, bit depth, colour type, compression 0, filter 0, interlace 0|1, CRC.
  if (view.getUint32(8) !== 13 || view.getUint32(12) !== PNG_IHDR) return null;
  const width = view.getUint32(16);
  const height = view.getUint32(20);
  const [depth, colourType, compression, filter, interlace] = [bytes[24]!, bytes[25]!, bytes[26]!, bytes[27]!, bytes[28]!];
  if (width < 1 || height < 1 || width > PNG_HEADER_MAX_SIDE || height > PNG_HEADER_MAX_SIDE) return null;
  if (!PNG_BIT_DEPTHS[colourType]?.includes(depth) || compression !== 0 || filter !== 0 || interlace > 1) return null;
  // Each chunk: length, type, data, CRC (of type and data).
  for (let at = 8; at + 8 <= bytes.byteLength; ) {
    const length = view.getUint32(at);
    if (at > 8 && view.getUint32(at + 4) === PNG_IDAT) return { mimeType: 'image/png', width, height };
    const end = at + 8 + length;
    if (end + 4 > bytes.byteLength || crc32(bytes.subarray(at + 4, end)) !== view.getUint32(end)) return null;
    at = end + 4;
  }
  return null;
}

/** Per-call options of {@link decodeImage}. */
export interface DecodeImageOptions {
  /** Refuse images with more pixels than this (width x height). Default 50 000 000. */
  readonly maxPixels?: number;
}

/**
 * Decodes every pixel of an image, throwing `PipelineError('corrupt_image')` when any
 * part does not decode.
 *
 * {@link probeImage} reads the header only, and a truncated PNG, JPEG or WebP keeps a
 * whole header: only reading the pixel data finds the damage. Input images are checked
 * with this before anything is written, so a cut file is refused at import instead of
 * costing a job row, a reservation and a provider call. sharp's `stats()` streams
 * through the image, so no full-size pixel buffer is allocated.
 *
 * @example
 * await decodeImage(bytes, { maxPixels: 50_000_000 });
 */
export async function decodeImage(bytes: Uint8Array, options: DecodeImageOptions = {}): Promise<void> {
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (bytes.byteLength === 0) throw new PipelineError('corrupt_image', 'image is empty (0 bytes)');
  await (await loadSharp())(bytes, { failOn: 'error', limitInputPixels: maxPixels })
    .stats()
    .catch((error: unknown) => {
      throw new PipelineError('corrupt_image', `image does not decode completely (${bytes.byteLength} bytes): ${errorText(error)}`, {
        cause: error,
      });
    });
}

/**
 * Validates and converts an image to WebP (sharp).
 *
 * Rejects, with `PipelineError('corrupt_image')`: inputs over `maxInputBytes`,
 * bytes that do not decode (the whole image is decoded, so truncated files fail
 * here, not later), zero dimensions and images over `maxPixels`.
 * EXIF orientation is applied so the stored image looks like the original.
 *
 * @example
 * const webp = await toWebp(pngBytes, { quality: 80 });
 * await store.put(key, webp.bytes, webp.contentType);
 */
export async function toWebp(bytes: Uint8Array, options: ToWebpOptions = {}): Promise<WebpImage> {
  const quality = options.quality ?? DEFAULT_WEBP_QUALITY;
  const maxInputBytes = options.maxInputBytes ?? DEFAULT_MAX_INPUT_BYTES;
  const maxPixels = options.maxPixels ?? DEFAULT_MAX_PIXELS;
  if (bytes.byteLength > maxInputBytes) {
    throw new PipelineError('corrupt_image', `image too large: ${bytes.byteLength} bytes > limit ${maxInputBytes}`);
  }
  const probe = await probeImage(bytes);
  if (probe.width * probe.height > maxPixels) {
    throw new PipelineError('corrupt_image', `image too large: ${probe.width}x${probe.height} > limit ${maxPixels} pixels`);
  }
  try {
    const { data, info } = await (await loadSharp())(bytes, { failOn: 'error', limitInputPixels: maxPixels })
      .rotate()
      .webp({ quality })
      .toBuffer({ resolveWithObject: true });
    if (info.width <= 0 || info.height <= 0) throw new Error(`empty output ${info.width}x${info.height}`);
    const out = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return { bytes: out, width: info.width, height: info.height, byteSize: out.byteLength, contentType: 'image/webp' };
  } catch (error) {
    throw new PipelineError('corrupt_image', `image does not convert to WebP (${bytes.byteLength} bytes): ${errorText(error)}`, {
      cause: error,
    });
  }
}

/** The file extension (no dot) conventionally used for a mime type, e.g. `image/png` -> `png`. */
export function extensionForMimeType(mimeType: string): string {
  switch (mimeType) {
    case 'image/jpeg':
      return 'jpg';
    case 'image/svg+xml':
      return 'svg';
    default: {
      const sub = mimeType.split('/')[1] ?? 'bin';
      return /^[a-z0-9]+$/.test(sub) ? sub : 'bin';
    }
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
