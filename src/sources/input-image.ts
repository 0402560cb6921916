import { decodeImage, probeImage, DEFAULT_MAX_PIXELS, type ImageProbe } from '../adapters/image-codec.js';

/**
 * Largest input image, in bytes (50 MiB): a file or an upload larger than this is refused
 * before it is read whole. The original is stored as given; the provider gets a copy
 * converted and downscaled to fit its inline request limit (`toProviderInputImage`, 13 MiB),
 * so an image larger than the request limit (a 30 MB scan, a camera's PNG) is still usable.
 * Over HTTP the body limit (`IMAGEGEN_HTTP_BODY_LIMIT_BYTES`, 30 MiB) bounds an upload first.
 */
export const MAX_INPUT_IMAGE_BYTES = 50 * 1024 * 1024;

/**
 * Checks that `bytes` are one whole input image within the limits: at most
 * {@link MAX_INPUT_IMAGE_BYTES}, a format sharp reads, at most `DEFAULT_MAX_PIXELS` (read
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
  if (bytes.byteLength > MAX_INPUT_IMAGE_BYTES) return { rule: `${label} is ${bytes.byteLength} bytes, more than the ${MAX_INPUT_IMAGE_BYTES}-byte limit` };
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
