import sharp from 'sharp';
import { crc32 } from 'node:zlib';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import { decodeImage, extensionForMimeType, pngHeader, probeImage, toWebp } from '../../src/adapters/image-codec.js';

async function solid(format: 'png' | 'jpeg' | 'webp', width: number, height: number): Promise<Uint8Array> {
  const img = sharp({ create: { width, height, channels: 3, background: { r: 10, g: 120, b: 200 } } });
  return new Uint8Array(await (format === 'png' ? img.png() : format === 'jpeg' ? img.jpeg() : img.webp()).toBuffer());
}

async function corrupt(promise: Promise<unknown>): Promise<PipelineError> {
  const error = await promise.then(
    () => {
      throw new Error('expected corrupt_image');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PipelineError);
  expect((error as PipelineError).errorClass).toBe('corrupt_image');
  return error as PipelineError;
}

describe('toWebp', () => {
  it.each(['png', 'jpeg'] as const)('converts a valid %s to WebP with its dimensions and size', async (format) => {
    const out = await toWebp(await solid(format, 120, 80));
    expect(out).toMatchObject({ width: 120, height: 80, contentType: 'image/webp', byteSize: out.bytes.byteLength });
    const meta = await sharp(out.bytes).metadata();
    expect(meta.format).toBe('webp');
    expect([meta.width, meta.height]).toEqual([120, 80]);
  });

  it('quality changes the output size', async () => {
    const noisy = await sharp(Buffer.from(Array.from({ length: 200 * 200 * 3 }, (_, i) => (i * 7919) % 251)), {
      raw: { width: 200, height: 200, channels: 3 },
    })
      .png()
      .toBuffer();
    const low = await toWebp(noisy, { quality: 10 });
    const high = await toWebp(noisy, { quality: 95 });
    expect(low.byteSize).toBeLessThan(high.byteSize);
  });

  it('garbage bytes -> corrupt_image (retryable), without the bytes in the message', async () => {
    const garbage = new TextEncoder().encode('GARBAGE-GARBAGE-GARBAGE not an image at all');
    const error = await corrupt(toWebp(garbage));
    expect(error.retryable).toBe(true);
    expect(error.message).not.toContain('GARBAGE');
  });

  it('empty input -> corrupt_image', async () => {
    await corrupt(toWebp(new Uint8Array()));
  });

  it('a truncated PNG -> corrupt_image', async () => {
    const png = await solid('png', 300, 300);
    const truncated = new Uint8Array(png.slice(0, Math.floor(png.byteLength / 2)));
    await corrupt(toWebp(truncated));
  });

  it('an input over maxInputBytes -> corrupt_image', async () => {
    const png = await solid('png', 64, 64);
    const error = await corrupt(toWebp(png, { maxInputBytes: png.byteLength - 1 }));
    expect(error.message).toMatch(/too large/);
    await expect(toWebp(png, { maxInputBytes: png.byteLength })).resolves.toMatchObject({ width: 64 });
  });

  it('an image over maxPixels -> corrupt_image', async () => {
    const png = await solid('png', 100, 100);
    await corrupt(toWebp(png, { maxPixels: 9_999 }));
    await expect(toWebp(png, { maxPixels: 10_000 })).resolves.toMatchObject({ width: 100, height: 100 });
  });
});

describe('probeImage', () => {
  it.each([
    ['png', 'image/png'],
    ['jpeg', 'image/jpeg'],
    ['webp', 'image/webp'],
  ] as const)('reads %s format and dimensions', async (format, mimeType) => {
    expect(await probeImage(await solid(format, 33, 17))).toEqual({ mimeType, width: 33, height: 17 });
  });

  it('rejects non-images with corrupt_image', async () => {
    await corrupt(probeImage(new TextEncoder().encode('{"json": true}')));
    await corrupt(probeImage(new Uint8Array()));
  });
});

describe('pngHeader: a PNG probed without sharp', () => {
  afterEach(() => vi.restoreAllMocks());
  const pixels = (channels: 1 | 2 | 3 | 4) => sharp({ create: { width: 37, height: 21, channels: channels === 1 || channels === 2 ? 3 : channels, background: { r: 200, g: 100, b: 50, alpha: 0.5 } } });
  const kinds: ReadonlyArray<readonly [string, () => Promise<Buffer>]> = [
    ['grey 8-bit', () => pixels(3).greyscale().png().toBuffer()],
    ['grey 16-bit', () => pixels(3).greyscale().toColourspace('grey16').png().toBuffer()],
    ['rgb', () => pixels(3).png().toBuffer()],
    ['rgba', () => pixels(4).png().toBuffer()],
    ['rgb 16-bit', () => pixels(3).toColourspace('rgb16').png().toBuffer()],
    ['palette', () => pixels(3).png({ palette: true }).toBuffer()],
    ['interlaced', () => pixels(3).png({ progressive: true }).toBuffer()],
    ['1x1', () => sharp({ create: { width: 1, height: 1, channels: 3, background: '#000' } }).png().toBuffer()],
    ['4000x3', () => sharp({ create: { width: 4000, height: 3, channels: 3, background: '#000' } }).png().toBuffer()],
  ];

  it.each(kinds)('%s: the same answer as sharp\'s metadata()', async (_, make) => {
    const png = new Uint8Array(await make());
    const meta = await sharp(png).metadata();
    expect(pngHeader(png)).toEqual({ mimeType: 'image/png', width: meta.width, height: meta.height });
    expect(await probeImage(png)).toEqual(pngHeader(png));
  });

  /** A PNG whose IHDR `edit` changed; with `fixCrc` (default), the chunk's CRC made right again. */
  async function ihdrEdited(edit: (png: Buffer) => void, fixCrc = true): Promise<Uint8Array> {
    const png = Buffer.from(await pixels(3).png().toBuffer());
    edit(png);
    if (fixCrc) png.writeUInt32BE(crc32(png.subarray(12, 29)), 29);
    return new Uint8Array(png);
  }

  it.each([
    ['a wrong CRC', () => ihdrEdited((png) => png.writeUInt32BE(~png.readUInt32BE(29) >>> 0, 29), false)],
    ['width 0', () => ihdrEdited((png) => png.writeUInt32BE(0, 16))],
    ['height over 65535 (sharp\'s limits decide)', () => ihdrEdited((png) => png.writeUInt32BE(70_000, 20))],
    ['colour type 5 (none such)', () => ihdrEdited((png) => (png[25] = 5))],
    ['bit depth 16 with a palette', () => ihdrEdited((png) => ((png[24] = 16), (png[25] = 3)))],
    ['interlace method 2', () => ihdrEdited((png) => (png[28] = 2))],
    ['cut inside the IHDR', async () => new Uint8Array((await pixels(3).png().toBuffer()).subarray(0, 30))],
    ['cut after the IHDR, before the first IDAT', async () => new Uint8Array((await pixels(3).png().toBuffer()).subarray(0, 40))],
    ['an ancillary chunk with a wrong CRC', async () => {
      const png = Buffer.from(await pixels(3).withMetadata({ density: 300 }).png().toBuffer());
      // The chunk after the IHDR (an ICC profile here), one byte of its data changed.
      expect(png.toString('latin1', 37, 41)).not.toBe('IDAT');
      png.writeUInt8(png.readUInt8(41) ^ 0xff, 41);
      return new Uint8Array(png);
    }],
    ['a JPEG', async () => new Uint8Array(await pixels(3).jpeg().toBuffer())],
    ['text', async () => new TextEncoder().encode('\x89PNG but not really, just words')],
  ] as const)('%s: null (sharp decides)', async (_, make) => {
    expect(pngHeader(await make())).toBeNull();
  });

  it('a PNG cut short at every length up to its first IDAT and past it: an image exactly when sharp says so', async () => {
    const png = await pixels(4).withMetadata({ density: 300 }).png({ palette: true }).toBuffer();
    const idat = png.indexOf('IDAT', 0, 'latin1') - 4;
    expect(idat).toBeGreaterThan(33);
    for (let length = 1; length <= idat + 24; length++) {
      const cut = new Uint8Array(png.subarray(0, length));
      const bySharp = await sharp(cut, { failOn: 'error' }).metadata().then(() => true, () => false);
      expect(pngHeader(cut) !== null, `cut at ${length} bytes`).toBe(bySharp);
    }
  });

  it('a damaged IHDR goes to sharp: its verdict stands (corrupt_image for bytes it cannot read)', async () => {
    const metadata = vi.spyOn(sharp.prototype, 'metadata');
    const colourType5 = await ihdrEdited((png) => (png[25] = 5));
    await corrupt(probeImage(colourType5));
    expect(metadata).toHaveBeenCalledTimes(1);
  });

  it('probeImage and toWebp of a whole PNG make no metadata() call; of a JPEG, one each', async () => {
    const metadata = vi.spyOn(sharp.prototype, 'metadata');
    const png = await solid('png', 50, 40);
    expect(await probeImage(png)).toEqual({ mimeType: 'image/png', width: 50, height: 40 });
    expect(await toWebp(png)).toMatchObject({ width: 50, height: 40 });
    expect(metadata).not.toHaveBeenCalled();
    const jpeg = await solid('jpeg', 50, 40);
    expect(await probeImage(jpeg)).toEqual({ mimeType: 'image/jpeg', width: 50, height: 40 });
    await toWebp(jpeg);
    expect(metadata).toHaveBeenCalledTimes(2);
  });
});

describe('decodeImage', () => {
  // Seeded noise (xorshift32) compresses badly, so a cut lands well inside the pixel data.
  const noise = () => {
    const raw = Buffer.alloc(160 * 96 * 3);
    let x = 1;
    for (let i = 0; i < raw.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      raw[i] = x & 0xff;
    }
    return sharp(raw, { raw: { width: 160, height: 96, channels: 3 } });
  };
  const half = (bytes: Buffer): Buffer => Buffer.from(bytes.subarray(0, Math.floor(bytes.byteLength / 2)));
  const truncated = {
    png: async () => half(await noise().png().toBuffer()),
    jpeg: async () => half(await noise().jpeg().toBuffer()),
    // Cut to an even length (RIFF chunks are even-sized) with the RIFF and VP8 chunk sizes
    // rewritten to match, so the header still looks whole.
    webp: async () => {
      const full = await noise().webp().toBuffer();
      expect(full.toString('latin1', 12, 16)).toBe('VP8 ');
      const cut = Buffer.from(full.subarray(0, Math.floor(full.byteLength / 4) * 2));
      cut.writeUInt32LE(cut.byteLength - 8, 4);
      cut.writeUInt32LE(cut.byteLength - 20, 16);
      return cut;
    },
  };

  it.each(['png', 'jpeg', 'webp'] as const)('accepts a whole %s', async (format) => {
    await expect(decodeImage(await solid(format, 40, 30))).resolves.toBeUndefined();
  });

  it.each(['png', 'jpeg', 'webp'] as const)('a %s cut in half passes probeImage (header only) but not decodeImage', async (format) => {
    const bytes = await truncated[format]();
    expect(await probeImage(bytes)).toMatchObject({ width: 160, height: 96 });
    const error = await corrupt(decodeImage(bytes));
    expect(error.message).toMatch(/does not decode completely/);
  });

  it('refuses an image over maxPixels without decoding it, and empty input', async () => {
    const png = await solid('png', 100, 100);
    await corrupt(decodeImage(png, { maxPixels: 9_999 }));
    await expect(decodeImage(png, { maxPixels: 10_000 })).resolves.toBeUndefined();
    await corrupt(decodeImage(new Uint8Array()));
  });
});

describe('extensionForMimeType', () => {
  it('maps common image types and never returns path characters', () => {
    expect(extensionForMimeType('image/jpeg')).toBe('jpg');
    expect(extensionForMimeType('image/png')).toBe('png');
    expect(extensionForMimeType('image/webp')).toBe('webp');
    expect(extensionForMimeType('image/../../x')).toBe('bin');
  });
});
