import { decodeImage, probeImage, DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS, type ImageProbe } from '../adapters/image-codec.js';

/** Largest input image, in bytes (20 MiB): an upload larger than this is refused before it is read whole. */
export const MAX_INPUT_IMAGE_BYTES = DEFAULT_MAX_INPUT_BYTES;

/**
 * Checks that `bytes` are one whole input image within the limits: at most
 * `DEFAULT_MAX_INPUT_BYTES`, a format sharp reads, at most `DEFAULT_MAX_PIXELS` (read
 * from the header first, so an image bomb is never decoded), and pixel data that decodes
 * to the end (a truncated file keeps a whole header). Reads only.
 *
 * @param label how the rule names the image (a file path, `inputImageData`, `the upload`).
 * @returns the image's type and size, or the rule it broke, for a field-named problem.
 * @example
 * const checked = await inspectInputImage(bytes, 'product.png');
 * if ('rule' in checked) problems.push({ field, rule: checked.rule });
 */
export async function inspectInputImage(bytes: Uint8Array, label: string): Promise<{ readonly image: ImageProbe } | { readonly rule: string }> {
  if (bytes.byteLength > DEFAULT_MAX_INPUT_BYTES) return { rule: `${label} is ${bytes.byteLength} bytes, more than the ${DEFAULT_MAX_INPUT_BYTES}-byte limit` };
  const probe = await probeImage(bytes).catch(() => null);
  if (probe === null) return { rule: `${label} is not an image (PNG, JPEG, WebP, GIF, AVIF, TIFF)` };
  if (probe.width * probe.height > DEFAULT_MAX_PIXELS) return { rule: `${label} is ${probe.width}x${probe.height}, more than the ${DEFAULT_MAX_PIXELS}-pixel limit` };
  const decodes = await decodeImage(bytes, { maxPixels: DEFAULT_MAX_PIXELS }).then(
    () => true,
    () => false,
  );
  if (!decodes) return { rule: `${label} is truncated or damaged: its pixel data does not decode` };
  return { image: probe };
}
