import { PipelineError } from '../domain/error-class.js';

/**
 * The rule for a server-requested delay longer than we honour.
 *
 * A retryable failure whose `retryAfterMs` exceeds `maxRetryAfterMs` (or is not a
 * finite number) means the provider's quota is gone for longer than a run should sit
 * silently waiting: it becomes a `quota_exhausted` failure (not retryable; the engine
 * halts the job like `auth`). Everything else is returned unchanged.
 *
 * The message says what the server asked for and the cap, then the original message
 * (already free of secrets: adapters redact before they classify).
 *
 * @example
 * capRetryAfter(new PipelineError('rate_limited', 'HTTP 429', { retryAfterMs: 3_600_000 }), 120_000).message
 * // 'provider quota exhausted: server asked to wait 3600 s (cap 120 s); HTTP 429'
 */
export function capRetryAfter(error: PipelineError, maxRetryAfterMs: number): PipelineError {
  const asked = error.retryAfterMs;
  if (!error.retryable || asked === undefined || Number.isNaN(asked) || asked <= maxRetryAfterMs) return error;
  return new PipelineError(
    'quota_exhausted',
    `provider quota exhausted: server asked to wait ${seconds(asked)} (cap ${seconds(maxRetryAfterMs)}); ${error.message}`,
    { retryAfterMs: asked, httpStatus: error.httpStatus, cause: error },
  );
}

function seconds(ms: number): string {
  if (!Number.isFinite(ms)) return 'forever';
  return `${Number((ms / 1000).toFixed(3))} s`;
}
