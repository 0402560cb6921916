import type { RandomSource } from '../domain/random.js';

/** Exponential backoff settings. All durations in ms. */
export interface BackoffConfig {
  /** Ceiling of the first retry's random delay. Default 1000. */
  readonly baseMs?: number;
  /** Growth per failed attempt. Default 2. */
  readonly multiplier?: number;
  /** Largest backoff we choose ourselves. Default 30,000. A longer server delay still wins, up to `maxRetryAfterMs`. */
  readonly maxMs?: number;
  /**
   * Longest server-requested delay (`retryAfterMs`) we honour. Default 120,000
   * (`IMAGEGEN_MAX_RETRY_AFTER_MS`). A server asking for more is out of quota: the
   * engine ends the job's new attempts with `quota_exhausted` (see `capRetryAfter`).
   */
  readonly maxRetryAfterMs?: number;
}

/** Node's timers hold a signed 32-bit delay: anything longer fires after 1 ms (TimeoutOverflowWarning). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** Default of {@link BackoffConfig.maxRetryAfterMs}. */
export const DEFAULT_MAX_RETRY_AFTER_MS = 120_000;

export const DEFAULT_BACKOFF: Readonly<Required<BackoffConfig>> = Object.freeze({
  baseMs: 1000,
  multiplier: 2,
  maxMs: 30_000,
  maxRetryAfterMs: DEFAULT_MAX_RETRY_AFTER_MS,
});

/**
 * Delay before the replacement of a failed attempt: full-jitter exponential backoff
 * (`random() * min(maxMs, baseMs * multiplier^(attempt-1))`), but never shorter than
 * the server's own `retryAfterMs`. The server's delay is honoured even above `maxMs`:
 * retrying earlier than a rate limiter asked only earns another 429. It is honoured up
 * to `maxRetryAfterMs` only (the engine turns a longer one into `quota_exhausted`
 * before it gets here), and the result never exceeds {@link MAX_TIMER_MS}, so no timer
 * overflows into a 1 ms wait.
 *
 * @param failedAttempt 1-based number of the attempt that just failed.
 */
export function fullJitterBackoff(
  failedAttempt: number,
  retryAfterMs: number | undefined,
  random: RandomSource,
  config: BackoffConfig = {},
): number {
  const { baseMs, multiplier, maxMs, maxRetryAfterMs } = { ...DEFAULT_BACKOFF, ...config };
  const ceiling = Math.min(maxMs, baseMs * Math.pow(multiplier, Math.max(0, failedAttempt - 1)));
  const jitter = Math.floor(random() * ceiling);
  const serverDelay = Number.isNaN(retryAfterMs ?? 0) ? 0 : Math.min(Math.ceil(retryAfterMs ?? 0), maxRetryAfterMs);
  return Math.min(MAX_TIMER_MS, Math.max(jitter, serverDelay));
}
