import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { JobSpecError, parseJobSpec } from '../../src/domain/job-spec.js';
import { imageModelCapabilities } from '../../src/domain/models.js';
import { toProviderInputImage } from '../../src/adapters/provider-input-image.js';

const spec = (stage: Record<string, unknown>) => ({ userId: 'u', stages: [{ quantity: 1, prompt: 'p', mergedImageAttachId: 'a', ...stage }] });
const problemsOf = (input: unknown, imageModel?: string) => {
  try {
    parseJobSpec(input, imageModel ? { imageModel } : {});
    return [];
  } catch (error) {
    return (error as JobSpecError).problems;
  }
};

describe('the model table decides a stage\'s aspect ratio and imageSize', () => {
  it('one table: sizes and ratios per model, a models/ prefix and -preview ids included', () => {
    expect(imageModelCapabilities('gemini-3-pro-image-preview').imageSizes).toEqual(['1K', '2K', '4K']);
    expect(imageModelCapabilities('models/gemini-3.1-flash-image-preview').imageSizes).toEqual(['512', '1K', '2K', '4K']);
    expect(imageModelCapabilities('gemini-3.1-flash-image').aspectRatios).toContain('8:1');
    expect(imageModelCapabilities('gemini-2.5-flash-image').imageSizes).toEqual([]);
    expect(imageModelCapabilities('my-own-model').responseModalities).toEqual(['IMAGE']);
  });

  it('imageSize is kept when the model takes it, and stored only when given', () => {
    expect(parseJobSpec(spec({ imageSize: '2K' }), { imageModel: 'gemini-3-pro-image-preview' }).stages[0]?.imageSize).toBe('2K');
    expect('imageSize' in (parseJobSpec(spec({}), { imageModel: 'gemini-3-pro-image-preview' }).stages[0] ?? {})).toBe(false);
  });

  it('refuses what the configured model does not take, naming the field', () => {
    expect(problemsOf(spec({ imageSize: '2K' }))).toEqual([{ field: 'stages[0].imageSize', rule: expect.stringContaining('takes no imageSize') }]);
    expect(problemsOf(spec({ imageSize: '512' }), 'gemini-3-pro-image-preview')).toEqual([{ field: 'stages[0].imageSize', rule: expect.stringContaining('must be one of 1K, 2K, 4K') }]);
    expect(problemsOf(spec({ aspectRatio: '1:8' }), 'gemini-3-pro-image-preview')).toEqual([{ field: 'stages[0].aspectRatio', rule: expect.stringContaining('1:8 is not taken by the model gemini-3-pro-image-preview') }]);
    expect(problemsOf(spec({ aspectRatio: '1:8', imageSize: '512' }), 'gemini-3.1-flash-image-preview')).toEqual([]);
  });
});

describe('toProviderInputImage: what the provider gets', () => {
  const make = (format: 'png' | 'jpeg' | 'gif' | 'tiff' | 'avif', alpha = false) =>
    sharp({ create: { width: 40, height: 30, channels: alpha ? 4 : 3, background: alpha ? { r: 1, g: 2, b: 3, alpha: 0.5 } : '#336699' } })
      [format]()
      .toBuffer()
      .then((b) => new Uint8Array(b));

  it('PNG and JPEG within the budget are sent as they are (the same bytes)', async () => {
    for (const [format, mimeType] of [['png', 'image/png'], ['jpeg', 'image/jpeg']] as const) {
      const bytes = await make(format);
      const sent = await toProviderInputImage(bytes);
      expect(sent).toMatchObject({ mimeType, converted: false });
      expect(sent.bytes).toBe(bytes);
    }
  });

  it('GIF and TIFF become PNG, AVIF (a photo format, no alpha) becomes JPEG, SVG becomes PNG', async () => {
    expect(await toProviderInputImage(await make('gif'))).toMatchObject({ mimeType: 'image/png', converted: true });
    expect(await toProviderInputImage(await make('tiff', true))).toMatchObject({ mimeType: 'image/png', converted: true });
    expect(await toProviderInputImage(await make('avif'))).toMatchObject({ mimeType: 'image/jpeg', converted: true });
    const svg = new TextEncoder().encode('<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10" fill="red"/></svg>');
    const sent = await toProviderInputImage(svg);
    expect(sent).toMatchObject({ mimeType: 'image/png', converted: true });
    expect((await sharp(sent.bytes).metadata()).format).toBe('png');
  });

  it('an image over the budget is downscaled until it fits', async () => {
    const noise = new Uint8Array(await sharp(Buffer.from(Array.from({ length: 300 * 300 * 3 }, (_, i) => (i * 7919) % 251)), { raw: { width: 300, height: 300, channels: 3 } }).png().toBuffer());
    const budget = Math.floor(noise.byteLength / 3);
    const sent = await toProviderInputImage(noise, { maxBytes: budget });
    expect(sent.converted).toBe(true);
    expect(sent.bytes.byteLength).toBeLessThanOrEqual(budget);
    const meta = await sharp(sent.bytes).metadata();
    expect(meta.width).toBeLessThan(300);
    expect(meta.width).toBe(meta.height);
  });
});
