import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';
import { BATCH_PRICE_RATIO, batchPricing, DEFAULT_PRICES, parsePriceTable, pricingFor, PriceTableError } from '../../src/domain/price-table.js';

describe('price table', () => {
  it('defaults: gemini-2.5-flash-image is $0.039 an image and $0.30 per 1M input tokens; thoughts are priced', () => {
    const p = pricingFor(DEFAULT_PRICES, 'gemini-2.5-flash-image');
    const request = { prompt: 'x'.repeat(40), inputAttachId: null };
    expect(p.costUsd(request, { promptTokens: 1_000_000, imageCount: 1 })).toBeCloseTo(0.339, 9);
    expect(p.costUsd(request, { promptTokens: 0, thoughtsTokens: 1_000_000, imageCount: 0 })).toBeCloseTo(2.5, 9);
    // Estimate: one image + 10 prompt tokens; a failed answer with no image costs its input only.
    expect(p.estimateUsd(request)).toBeCloseTo(0.039 + (10 * 0.3) / 1e6, 12);
    expect(p.costUsd(request, { promptTokens: 12, imageCount: 0 })).toBeCloseTo((12 * 0.3) / 1e6, 12);
    expect(p.possiblyBilledUsd(request)).toBe(0.039);
  });

  it('defaults: gemini-3-pro-image-preview per image by size (1K/2K $0.134, 4K $0.24), a dated id priced by its prefix', () => {
    const p = pricingFor(DEFAULT_PRICES, 'gemini-3-pro-image-preview-11-2025');
    expect(p.priced).toBe(true);
    const at = (imageSize?: '1K' | '2K' | '4K') => p.costUsd({ prompt: '', inputAttachId: null, imageSize }, { promptTokens: 0, imageCount: 1 });
    expect([at(), at('1K'), at('2K'), at('4K')]).toEqual([0.134, 0.134, 0.134, 0.24]);
  });

  it('batch prices are half of every figure (estimate, answer, possibly billed), for the same model; unpriced stays null', () => {
    expect(BATCH_PRICE_RATIO).toBe(0.5);
    const request = { prompt: 'x'.repeat(400), inputAttachId: 'a', imageSize: '2K' };
    const usage = { promptTokens: 1500, imageCount: 1, thoughtsTokens: 200 };
    const interactive = pricingFor(DEFAULT_PRICES, 'gemini-3-pro-image-preview');
    const batch = batchPricing(interactive);
    expect(batch.model).toBe('gemini-3-pro-image-preview');
    expect(batch.priced).toBe(true);
    expect(batch.estimateUsd(request)).toBeCloseTo(interactive.estimateUsd(request)! / 2, 12);
    expect(batch.costUsd(request, usage)).toBeCloseTo(interactive.costUsd(request, usage)! / 2, 12);
    expect(batch.costUsd(request, usage)).toBeCloseTo((0.134 + (1500 * 2) / 1e6 + (200 * 12) / 1e6) / 2, 12);
    expect(batch.possiblyBilledUsd(request)).toBeCloseTo(0.067, 12);
    const unpriced = batchPricing(pricingFor(DEFAULT_PRICES, 'some-other-model'));
    expect([unpriced.priced, unpriced.estimateUsd(request), unpriced.costUsd(request, usage)]).toEqual([false, null, null]);
  });

  it('the offline generator costs nothing', () => {
    const p = pricingFor(DEFAULT_PRICES, 'offline');
    expect(p.estimateUsd({ prompt: 'a long prompt', inputAttachId: 'in' })).toBe(0);
    expect(p.costUsd({ prompt: 'p', inputAttachId: 'in' }, undefined)).toBe(0);
  });

  it('an unknown model has no price: every cost is null (a job with a cap starts nothing; the pipeline warns)', () => {
    const p = pricingFor(DEFAULT_PRICES, 'my-own-model');
    expect(p.priced).toBe(false);
    expect(p.estimateUsd({ prompt: 'p', inputAttachId: null })).toBeNull();
    expect(p.costUsd({ prompt: 'p', inputAttachId: null }, { promptTokens: 5, imageCount: 1 })).toBeNull();
  });

  it('IMAGEGEN_PRICES as a value replaces the models it names and keeps the other defaults', () => {
    const config = loadConfig({ IMAGEGEN_PRICES: JSON.stringify({ 'gemini-2.5-flash-image': { perImageUsd: 0.02, inputPerMillionUsd: 0.1 }, 'my-model': { perImageUsd: { default: 1, '4K': 2 }, inputPerMillionUsd: 0 } }) });
    expect(pricingFor(config.prices, 'gemini-2.5-flash-image').possiblyBilledUsd({ prompt: '', inputAttachId: null })).toBe(0.02);
    expect(pricingFor(config.prices, 'my-model').possiblyBilledUsd({ prompt: '', inputAttachId: null, imageSize: '4K' })).toBe(2);
    expect(config.prices['gemini-3-pro-image-preview']).toEqual(DEFAULT_PRICES['gemini-3-pro-image-preview']);
    expect(loadConfig({}).prices).toBe(DEFAULT_PRICES);
  });

  it('IMAGEGEN_PRICES as @/path/file reads the file; a missing file or a bad table is a ConfigError naming the variable', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'imagegen-prices-'));
    try {
      const file = join(dir, 'prices.json');
      await writeFile(file, JSON.stringify({ 'gemini-2.5-flash-image': { perImageUsd: 0.05, inputPerMillionUsd: 0.3 } }));
      expect(pricingFor(loadConfig({ IMAGEGEN_PRICES: `@${file}` }).prices, 'gemini-2.5-flash-image').possiblyBilledUsd({ prompt: '', inputAttachId: null })).toBe(0.05);
      expect(() => loadConfig({ IMAGEGEN_PRICES: `@${join(dir, 'none.json')}` })).toThrow(ConfigError);
      expect(() => loadConfig({ IMAGEGEN_PRICES: '{"m": {"perImageUsd": -1, "inputPerMillionUsd": 0}}' })).toThrow(/IMAGEGEN_PRICES: m.perImageUsd must be a non-negative number/);
      expect(() => loadConfig({ IMAGEGEN_PRICES: 'not json' })).toThrow(/IMAGEGEN_PRICES: is not valid JSON/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects a size table without default and unknown keys', () => {
    expect(() => parsePriceTable('{"m": {"perImageUsd": {"1K": 1}, "inputPerMillionUsd": 0}}')).toThrow(PriceTableError);
    expect(() => parsePriceTable('{"m": {"perImageUsd": 1, "inputPerMillionUsd": 0, "outputPerMillionUsd": 3}}')).toThrow(/unknown key outputPerMillionUsd/);
  });
});
