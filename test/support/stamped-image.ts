import sharp from 'sharp';

/** Number of vertical stripes a stamp is written into (one hex digit each). */
export const STAMP_DIGITS = 6;
/** Largest stamp {@link renderStampedPng} can encode (24 bits). */
export const MAX_STAMP = 16 ** STAMP_DIGITS - 1;

/** Options of {@link renderStampedPng}. */
export interface StampedPngOptions {
  /** The number to stamp into the pixels, 0..{@link MAX_STAMP}. */
  readonly stamp: number;
  /** Width in px, at least 4 x {@link STAMP_DIGITS}. */
  readonly width: number;
  /** Height in px, at least 4. */
  readonly height: number;
}

/**
 * Renders a real PNG whose pixels carry a number, so tests can tell generated images
 * apart even after lossy WebP conversion.
 *
 * The image is {@link STAMP_DIGITS} vertical grey stripes; stripe `i` holds hex digit
 * `i` (most significant first) as the grey level `digit * 16 + 8`. Lossy codecs move
 * flat areas by a few levels at most, far less than the 8 levels of tolerance, so
 * {@link readStamp} recovers the number from the average of each stripe's centre.
 *
 * @example
 * const png = await renderStampedPng({ stamp: 42, width: 64, height: 36 });
 * await readStamp(png) // 42 (also after toWebp)
 */
export async function renderStampedPng(options: StampedPngOptions): Promise<Uint8Array> {
  const { stamp, width, height } = options;
  if (!Number.isInteger(stamp) || stamp < 0 || stamp > MAX_STAMP) throw new RangeError(`stamp out of range: ${stamp}`);
  if (width < 4 * STAMP_DIGITS || height < 4) throw new RangeError(`image too small for a stamp: ${width}x${height}`);
  const digits = stampDigits(stamp);
  const raw = Buffer.alloc(width * height * 3);
  for (let x = 0; x < width; x++) {
    const stripe = Math.min(STAMP_DIGITS - 1, Math.floor((x * STAMP_DIGITS) / width));
    const grey = (digits[stripe] ?? 0) * 16 + 8;
    for (let y = 0; y < height; y++) {
      const i = (y * width + x) * 3;
      raw[i] = grey;
      raw[i + 1] = grey;
      raw[i + 2] = grey;
    }
  }
  const png = await sharp(raw, { raw: { width, height, channels: 3 } }).png().toBuffer();
  return new Uint8Array(png.buffer, png.byteOffset, png.byteLength);
}

/**
 * Recovers the number {@link renderStampedPng} stamped into an image (PNG, WebP, JPEG,
 * resized or not, as long as the stripes are still vertical and side by side).
 */
export async function readStamp(bytes: Uint8Array): Promise<number> {
  const { data, info } = await sharp(bytes).removeAlpha().greyscale().raw().toBuffer({ resolveWithObject: true });
  const { width, height, channels } = info;
  let stamp = 0;
  for (let stripe = 0; stripe < STAMP_DIGITS; stripe++) {
    // Average the centre half of the stripe, away from edges that codecs smear.
    const x0 = Math.floor(((stripe + 0.25) * width) / STAMP_DIGITS);
    const x1 = Math.max(x0 + 1, Math.floor(((stripe + 0.75) * width) / STAMP_DIGITS));
    const y0 = Math.floor(height / 4);
    const y1 = Math.max(y0 + 1, Math.floor((3 * height) / 4));
    let sum = 0;
    let count = 0;
    for (let y = y0; y < y1; y++) {
      for (let x = x0; x < x1; x++) {
        sum += data[(y * width + x) * channels] ?? 0;
        count++;
      }
    }
    const digit = Math.max(0, Math.min(15, Math.floor(sum / count / 16)));
    stamp = stamp * 16 + digit;
  }
  return stamp;
}

function stampDigits(stamp: number): number[] {
  const digits: number[] = [];
  let rest = stamp;
  for (let i = 0; i < STAMP_DIGITS; i++) {
    digits.unshift(rest % 16);
    rest = Math.floor(rest / 16);
  }
  return digits;
}
