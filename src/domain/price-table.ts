import type { TokenUsage } from './ports.js';

/**
 * What one model's answers cost, in USD. Per image by output size (the provider bills
 * image output as tokens per image, a fixed count per size), plus input tokens and
 * thought tokens per million. Text parts of an image answer (a caption) are not priced:
 * `candidatesTokenCount` does not say which of its tokens were text, and they are few.
 */
export interface ModelPrice {
  /** Per output image, by `imageSize` (`512`, `1K`, `2K`, `4K`); `default`: a size not listed, or none asked. */
  readonly perImageUsd: Readonly<Record<string, number>> & { readonly default: number };
  /** Input tokens (text and images), per million. */
  readonly inputPerMillionUsd: number;
  /** Thought tokens (billed as text output), per million. Default 0. */
  readonly thoughtsPerMillionUsd?: number;
}

/** Prices by model id (see {@link priceOf}: an exact id, else the longest listed prefix). */
export type PriceTable = Readonly<Record<string, ModelPrice>>;

/** The model id the offline generator reports: it costs nothing. */
export const OFFLINE_MODEL = 'offline';

/**
 * When {@link DEFAULT_PRICES} were read, and where. They are LIST PRICES at that date
 * (paid tier, standard, not batch), an estimate of what the provider bills, not an
 * invoice: override them with `IMAGEGEN_PRICES` when yours differ or they change.
 */
export const DEFAULT_PRICES_AS_OF = '2026-12-06, https://ai.google.dev/gemini-api/docs/pricing';

const flash25 = Object.freeze({
  // $30 per 1M image output tokens; an image up to 1024x1024 is 1290 tokens: $0.039.
  perImageUsd: Object.freeze({ default: 0.039 }),
  inputPerMillionUsd: 0.3,
  thoughtsPerMillionUsd: 2.5,
});
const pro3 = Object.freeze({
  // $120 per 1M image output tokens; 1K and 2K images are 1120 tokens ($0.134), 4K 2000 ($0.24).
  perImageUsd: Object.freeze({ default: 0.134, '1K': 0.134, '2K': 0.134, '4K': 0.24 }),
  inputPerMillionUsd: 2,
  thoughtsPerMillionUsd: 12,
});
const flash31 = Object.freeze({
  // $60 per 1M image output tokens; 512: 747 tokens, 1K: 1120, 2K: 1680, 4K: 2520. The 1K
  // price agrees with an independent table (HeyPuter/puter's GEMINI_COST_MAP, PR 2562: $0.067
  // for a 1024x1024 image; $0.039 for 2.5 flash, as here).
  perImageUsd: Object.freeze({ default: 0.067, '512': 0.045, '1K': 0.067, '2K': 0.101, '4K': 0.151 }),
  inputPerMillionUsd: 0.5,
  thoughtsPerMillionUsd: 3,
});

/** List prices at {@link DEFAULT_PRICES_AS_OF}; `offline` is free. */
export const DEFAULT_PRICES: PriceTable = Object.freeze({
  'gemini-2.5-flash-image': flash25,
  'gemini-2.5-flash-image-preview': flash25,
  'gemini-3-pro-image-preview': pro3,
  'gemini-3-pro-image': pro3,
  'gemini-3.1-flash-image-preview': flash31,
  'gemini-3.1-flash-image': flash31,
  [OFFLINE_MODEL]: Object.freeze({ perImageUsd: Object.freeze({ default: 0 }), inputPerMillionUsd: 0, thoughtsPerMillionUsd: 0 }),
});

/**
 * Input tokens an attempt is estimated to send before it runs: its prompt at about 4
 * characters a token, plus one input image (1290 tokens: the largest per-image count of
 * the listed models, so the estimate errs high).
 */
export const ESTIMATED_INPUT_IMAGE_TOKENS = 1290;

/** What a price lookup needs of an attempt (an `AttemptRequest` fits; `imageSize` when the stage asks for one). */
export interface PricedRequest {
  readonly prompt: string;
  readonly inputAttachId: string | null;
  readonly imageSize?: string | null | undefined;
}

/**
 * One job's prices: the model its generator calls, bound to the price table. What the
 * engine asks before an attempt (the cap) and after its answer (the cost).
 */
export interface AttemptPricing {
  /** The model the answers are priced as (stored on each attempt). */
  readonly model: string;
  /** Whether the model has a price; without one every cost is null and a job with a cap starts no attempt. */
  readonly priced: boolean;
  /** Before an attempt: one image at its size plus the estimated input tokens, USD; null when unpriced. */
  estimateUsd(request: PricedRequest): number | null;
  /** What an answer cost from its usage, USD; null when unpriced. Without usage: the estimate. */
  costUsd(request: PricedRequest, usage: TokenUsage | null | undefined): number | null;
  /** A call that timed out may still be billed: one image at its size, USD; null when unpriced. */
  possiblyBilledUsd(request: PricedRequest): number | null;
}

function perImage(price: ModelPrice, size: string | null | undefined): number {
  return (size != null ? price.perImageUsd[size] : undefined) ?? price.perImageUsd.default;
}

/**
 * The price of `model`: its own entry, else the longest listed id it starts with (a dated
 * id such as `gemini-3-pro-image-preview-11-2025` is priced as `gemini-3-pro-image-preview`).
 */
export function priceOf(table: PriceTable, model: string): ModelPrice | undefined {
  if (Object.hasOwn(table, model)) return table[model];
  const prefix = Object.keys(table)
    .filter((id) => model.startsWith(id))
    .sort((a, b) => b.length - a.length)[0];
  return prefix === undefined ? undefined : table[prefix];
}

/** The pricing of `model` under `table` (see {@link AttemptPricing}). */
export function pricingFor(table: PriceTable, model: string): AttemptPricing {
  const price = priceOf(table, model);
  const estimate = (request: PricedRequest): number | null => {
    if (price === undefined) return null;
    const inputTokens = Math.ceil(request.prompt.length / 4) + (request.inputAttachId !== null ? ESTIMATED_INPUT_IMAGE_TOKENS : 0);
    return perImage(price, request.imageSize) + (inputTokens * price.inputPerMillionUsd) / 1e6;
  };
  return Object.freeze({
    model,
    priced: price !== undefined,
    estimateUsd: estimate,
    costUsd(request: PricedRequest, usage: TokenUsage | null | undefined): number | null {
      if (price === undefined) return null;
      if (usage == null) return estimate(request);
      const images = usage.imageCount ?? 0;
      return (
        images * perImage(price, request.imageSize) +
        ((usage.promptTokens ?? 0) * price.inputPerMillionUsd) / 1e6 +
        ((usage.thoughtsTokens ?? 0) * (price.thoughtsPerMillionUsd ?? 0)) / 1e6
      );
    },
    possiblyBilledUsd(request: PricedRequest): number | null {
      return price === undefined ? null : perImage(price, request.imageSize);
    },
  });
}

/** A price table that is not right: where, and the rule (the config turns it into a `ConfigError`). */
export class PriceTableError extends Error {
  override readonly name = 'PriceTableError';
}

function nonNegative(value: unknown, at: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new PriceTableError(`${at} must be a non-negative number, got ${JSON.stringify(value)}`);
  return value;
}

/**
 * Reads a price table written as JSON (`IMAGEGEN_PRICES`), merged over `base` model by
 * model: a model given replaces the default entry whole, the others stay.
 *
 * ```json
 * { "gemini-3-pro-image-preview": { "perImageUsd": { "default": 0.134, "4K": 0.24 }, "inputPerMillionUsd": 2, "thoughtsPerMillionUsd": 12 } }
 * ```
 *
 * `perImageUsd` may be a plain number (every size). @throws {PriceTableError}
 */
export function parsePriceTable(json: string, base: PriceTable = DEFAULT_PRICES): PriceTable {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (error) {
    throw new PriceTableError(`is not valid JSON (${(error as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new PriceTableError('must be a JSON object of model id -> prices');
  const table: Record<string, ModelPrice> = { ...base };
  for (const [model, entry] of Object.entries(raw as Record<string, unknown>)) {
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new PriceTableError(`${model} must be an object`);
    const e = entry as Record<string, unknown>;
    const known = ['perImageUsd', 'inputPerMillionUsd', 'thoughtsPerMillionUsd'];
    const unknown = Object.keys(e).filter((k) => !known.includes(k));
    if (unknown.length > 0) throw new PriceTableError(`${model}: unknown key ${unknown[0]} (known: ${known.join(', ')})`);
    const rawImage = e['perImageUsd'];
    let perImageUsd: ModelPrice['perImageUsd'];
    if (typeof rawImage === 'number') perImageUsd = { default: nonNegative(rawImage, `${model}.perImageUsd`) };
    else if (typeof rawImage === 'object' && rawImage !== null && !Array.isArray(rawImage)) {
      const sizes: Record<string, number> = {};
      for (const [size, value] of Object.entries(rawImage)) sizes[size] = nonNegative(value, `${model}.perImageUsd.${size}`);
      if (sizes['default'] === undefined) throw new PriceTableError(`${model}.perImageUsd.default is required (the price of a size not listed)`);
      perImageUsd = sizes as ModelPrice['perImageUsd'];
    } else throw new PriceTableError(`${model}.perImageUsd is required: a number, or an object of size -> USD with a default`);
    table[model] = Object.freeze({
      perImageUsd: Object.freeze(perImageUsd),
      inputPerMillionUsd: nonNegative(e['inputPerMillionUsd'], `${model}.inputPerMillionUsd`),
      thoughtsPerMillionUsd: e['thoughtsPerMillionUsd'] === undefined ? 0 : nonNegative(e['thoughtsPerMillionUsd'], `${model}.thoughtsPerMillionUsd`),
    });
  }
  return Object.freeze(table);
}

/** What the provider's batch API charges beside its interactive price (Gemini: 50%). */
export const BATCH_PRICE_RATIO = 0.5;

/** `pricing` at batch prices: every figure x {@link BATCH_PRICE_RATIO}; the model stays. */
export function batchPricing(pricing: AttemptPricing): AttemptPricing {
  const half = (usd: number | null): number | null => (usd === null ? null : usd * BATCH_PRICE_RATIO);
  return Object.freeze({
    model: pricing.model,
    priced: pricing.priced,
    estimateUsd: (request: PricedRequest) => half(pricing.estimateUsd(request)),
    costUsd: (request: PricedRequest, usage: TokenUsage | null | undefined) => half(pricing.costUsd(request, usage)),
    possiblyBilledUsd: (request: PricedRequest) => half(pricing.possiblyBilledUsd(request)),
  });
}
