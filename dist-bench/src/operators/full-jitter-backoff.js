export const DEFAULT_BACKOFF = Object.freeze({
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
export function fullJitterBackoff(failedAttempt, retryAfterMs, random, config = {}) {
    const { baseMs, multiplier, maxMs } = { ...DEFAULT_BACKOFF, ...config };
    const ceiling = Math.min(maxMs, baseMs * Math.pow(multiplier, Math.max(0, failedAttempt - 1)));
    const jitter = Math.floor(random() * ceiling);
    return Math.max(jitter, Math.ceil(retryAfterMs ?? 0));
}
