import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import { decodeImage, extensionForMimeType, probeImage, toWebp } from '../../src/adapters/image-codec.js';

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
