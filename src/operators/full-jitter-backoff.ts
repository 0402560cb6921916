import type { RandomSource } from '../domain/random.js';

/** Exponential backoff settings. All durations in ms. */
export interface BackoffConfig {
  /** Ceiling of the first retry's random delay. Default 1000. */
  readonly baseMs?: number;
  /** Growth per failed attempt. Default 2. */
  readonly multiplier?: number;
  /** Largest backoff we choose ourselves. Default 30,000. A longer server delay still wins. */
  readonly maxMs?: number;
}

export const DEFAULT_BACKOFF: Readonly<Required<BackoffConfig>> = Object.freeze({
  baseMs: 1000,
  multiplier: 2,
  maxMs: 30_000,
});

/**
 * Delay before the replacement of a failed attempt: full-jitter exponential backoff
 * (`random() * min(maxMs, baseMs * multiplier^(attempt-1))`), but never shorter than
 * the server's own `retryAfterMs`. The server's delay is honoured even above `maxMs`:
 * retrying earlier than a rate limiter asked only earns another 429.
 *
 * @param failedAttempt 1-based number of the attempt that just failed.
 */
export function fullJitterBackoff(
  failedAttempt: number,
  retryAfterMs: number | undefined,
  random: RandomSource,
  config: BackoffConfig = {},
): number {
  const { baseMs, multiplier, maxMs } = { ...DEFAULT_BACKOFF, ...config };
  const ceiling = Math.min(maxMs, baseMs * Math.pow(multiplier, Math.max(0, failedAttempt - 1)));
  const jitter = Math.floor(random() * ceiling);
  return Math.max(jitter, Math.ceil(retryAfterMs ?? 0));
}
