import { aspectRatioParts, type AspectRatio } from '../domain/aspect-ratio.js';

/**
 * Pixel size of an image with the given aspect ratio whose long side is `longSide`.
 * The short side is rounded and at least 1 px.
 *
 * @example
 * dimensionsForAspectRatio('16:9', 512) // { width: 512, height: 288 }
 */
export function dimensionsForAspectRatio(ratio: AspectRatio, longSide: number): { width: number; height: number } {
  const [w, h] = aspectRatioParts(ratio);
  if (w >= h) return { width: longSide, height: Math.max(1, Math.round((longSide * h) / w)) };
  return { width: Math.max(1, Math.round((longSide * w) / h)), height: longSide };
}
