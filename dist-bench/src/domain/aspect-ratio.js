/** Aspect ratios the Gemini image models accept (`imageConfig.aspectRatio`). */
export const ASPECT_RATIOS = ['1:1', '2:3', '3:2', '3:4', '4:3', '4:5', '5:4', '9:16', '16:9', '21:9'];
/** The source system's default. */
export const DEFAULT_ASPECT_RATIO = '16:9';
/** `[width, height]` of an aspect ratio, e.g. `16:9` -> `[16, 9]`. */
export function aspectRatioParts(ratio) {
    const [w, h] = ratio.split(':').map(Number);
    return [w ?? 1, h ?? 1];
}
