/**
 * Every aspect ratio some Gemini image model accepts (`imageConfig.aspectRatio`). Which
 * ones a given model takes is `src/domain/models.ts`'s table: the extreme ratios (1:4,
 * 4:1, 1:8, 8:1) are `gemini-3.1-flash-image`'s only.
 */
export const ASPECT_RATIOS = ['1:1', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '9:16', '16:9', '21:9', '1:4', '4:1', '1:8', '8:1'] as const;

export type AspectRatio = (typeof ASPECT_RATIOS)[number];

/** The source system's default. */
export const DEFAULT_ASPECT_RATIO: AspectRatio = '16:9';

/** `[width, height]` of an aspect ratio, e.g. `16:9` -> `[16, 9]`. */
export function aspectRatioParts(ratio: AspectRatio): readonly [number, number] {
  const [w, h] = ratio.split(':').map(Number);
  return [w ?? 1, h ?? 1];
}
