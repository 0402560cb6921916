import type { AspectRatio } from './aspect-ratio.js';

/**
 * What each Gemini image model accepts: ONE table, read by spec validation
 * (`parseJobSpec`: a stage's `aspectRatio` and `imageSize` against the configured
 * model) and by the Gemini adapter (`responseModalities`, whether `imageSize` is sent).
 * Checked against Google's image-generation guide (models as of 2026-03):
 *
 * | model (id prefix) | aspect ratios | imageSize | responseModalities |
 * | --- | --- | --- | --- |
 * | `gemini-2.5-flash-image` | the 10 standard | none (1024 px class) | `IMAGE` |
 * | `gemini-3-pro-image` (`-preview`) | the 10 standard | `1K`, `2K`, `4K` | `TEXT`, `IMAGE` |
 * | `gemini-3.1-flash-image` (`-preview`) | the 10 + `1:4`, `4:1`, `1:8`, `8:1` | `512`, `1K`, `2K`, `4K` | `TEXT`, `IMAGE` |
 *
 * A model id the table does not know (a host's own, a newer one) gets
 * {@link FALLBACK_IMAGE_MODEL}: the standard ratios, no `imageSize`, `IMAGE` only.
 */

/** `imageConfig.imageSize` values (the long side class of the output). */
export const IMAGE_SIZES = ['512', '1K', '2K', '4K'] as const;

export type ImageSize = (typeof IMAGE_SIZES)[number];

/** What one image model accepts. */
export interface ImageModelCapabilities {
  /** Model id prefix the row applies to (`gemini-3-pro-image` matches `gemini-3-pro-image-preview`). */
  readonly idPrefix: string;
  readonly aspectRatios: readonly AspectRatio[];
  /** Empty: the model takes no `imageSize` (the adapter never sends one). */
  readonly imageSizes: readonly ImageSize[];
  /** `responseModalities` the adapter asks for (Google's examples for the model). */
  readonly responseModalities: readonly ('TEXT' | 'IMAGE')[];
}

/** The default Gemini image model (`GEMINI_MODEL` unset). */
export const DEFAULT_GEMINI_IMAGE_MODEL = 'gemini-2.5-flash-image';

const STANDARD_RATIOS: readonly AspectRatio[] = Object.freeze(['1:1', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '9:16', '16:9', '21:9']);

/** The table, longest prefix first (so a more specific id wins). */
export const IMAGE_MODELS: readonly ImageModelCapabilities[] = Object.freeze([
  Object.freeze({
    idPrefix: 'gemini-3.1-flash-image',
    aspectRatios: Object.freeze([...STANDARD_RATIOS, '1:4', '4:1', '1:8', '8:1'] as const),
    imageSizes: Object.freeze(['512', '1K', '2K', '4K'] as const),
    responseModalities: Object.freeze(['TEXT', 'IMAGE'] as const),
  }),
  Object.freeze({
    idPrefix: 'gemini-3-pro-image',
    aspectRatios: STANDARD_RATIOS,
    imageSizes: Object.freeze(['1K', '2K', '4K'] as const),
    responseModalities: Object.freeze(['TEXT', 'IMAGE'] as const),
  }),
  Object.freeze({ idPrefix: 'gemini-2.5-flash-image', aspectRatios: STANDARD_RATIOS, imageSizes: Object.freeze([]), responseModalities: Object.freeze(['IMAGE'] as const) }),
]);

/** Capabilities of a model id the table does not know. */
export const FALLBACK_IMAGE_MODEL: ImageModelCapabilities = Object.freeze({
  idPrefix: '',
  aspectRatios: STANDARD_RATIOS,
  imageSizes: Object.freeze([]),
  responseModalities: Object.freeze(['IMAGE'] as const),
});

/**
 * The capabilities of `model` (a `models/` prefix is ignored), else {@link FALLBACK_IMAGE_MODEL}.
 *
 * @example
 * imageModelCapabilities('gemini-3-pro-image-preview').imageSizes // ['1K', '2K', '4K']
 */
export function imageModelCapabilities(model: string = DEFAULT_GEMINI_IMAGE_MODEL): ImageModelCapabilities {
  const id = model.startsWith('models/') ? model.slice('models/'.length) : model;
  return IMAGE_MODELS.find((row) => id.startsWith(row.idPrefix)) ?? FALLBACK_IMAGE_MODEL;
}

export function isImageSize(value: unknown): value is ImageSize {
  return typeof value === 'string' && (IMAGE_SIZES as readonly string[]).includes(value);
}
