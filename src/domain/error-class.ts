import type { TokenUsage } from './ports.js';

/**
 * The closed set of reasons an attempt can fail, decided in one place.
 *
 * Adapters classify their failures at the edge (HTTP status, SDK error, sharp
 * decode error, database error) into one of these; the engine only ever looks at
 * the class, never at a raw SDK error.
 */
export const ERROR_CLASSES = [
  'rate_limited',
  'overloaded',
  'timeout',
  'network',
  'no_image',
  'safety_blocked',
  'prompt_blocked',
  'invalid_request',
  'auth',
  'quota_exhausted',
  'corrupt_image',
  'storage',
  'database',
  'cancelled',
] as const;

export type ErrorClass = (typeof ERROR_CLASSES)[number];

/**
 * Whether a failure of this class is worth another attempt for the same slot.
 *
 * - `safety_blocked` is about the *output* (IMAGE_SAFETY and friends): sampling is
 *   random, so another attempt can pass; the per-slot budget bounds the cost.
 * - `prompt_blocked` (a policy decision about the request: `promptFeedback.blockReason`,
 *   `PROHIBITED_CONTENT`), `invalid_request`: the same request will fail the same way.
 * - `auth`: no request with this key can succeed; it stops the whole job.
 * - `quota_exhausted`: the provider's quota is gone for longer than a retry waits: a
 *   daily or zero quota (a 429 whose `QuotaFailure` names a `PerDay` quota or a limit of
 *   0), or a requested wait above `IMAGEGEN_MAX_RETRY_AFTER_MS`. No request of this job
 *   can succeed soon; like `auth`, it stops the whole job.
 * - `cancelled`: somebody asked us to stop.
 */
export const RETRYABLE: Readonly<Record<ErrorClass, boolean>> = Object.freeze({
  rate_limited: true,
  overloaded: true,
  timeout: true,
  network: true,
  no_image: true,
  safety_blocked: true,
  prompt_blocked: false,
  invalid_request: false,
  auth: false,
  quota_exhausted: false,
  corrupt_image: true,
  storage: true,
  database: true,
  cancelled: false,
});

export function isRetryable(errorClass: ErrorClass): boolean {
  return RETRYABLE[errorClass];
}

export function isErrorClass(value: unknown): value is ErrorClass {
  return typeof value === 'string' && (ERROR_CLASSES as readonly string[]).includes(value);
}

export interface PipelineErrorOptions {
  /** The server's own retry delay (RetryInfo.retryDelay or Retry-After), in ms. */
  readonly retryAfterMs?: number | undefined;
  /** HTTP status of the failed call, when there was one. */
  readonly httpStatus?: number | undefined;
  /** What the provider reported for an answer that failed (a safety block, no image): such answers are billed. */
  readonly usage?: TokenUsage | undefined;
  readonly cause?: unknown;
}

/**
 * A classified failure. Every error that reaches the engine from a port is (or is
 * turned into) one of these.
 */
export class PipelineError extends Error {
  override readonly name = 'PipelineError';
  readonly errorClass: ErrorClass;
  readonly retryable: boolean;
  readonly retryAfterMs: number | undefined;
  readonly httpStatus: number | undefined;
  /** The failed answer's usage, when the provider answered (see {@link PipelineErrorOptions.usage}). */
  readonly usage: TokenUsage | undefined;

  constructor(errorClass: ErrorClass, message: string, options: PipelineErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.errorClass = errorClass;
    this.retryable = RETRYABLE[errorClass];
    this.retryAfterMs = options.retryAfterMs;
    this.httpStatus = options.httpStatus;
    this.usage = options.usage;
  }
}

/** The same failure carrying the usage of the answer that failed (the cost of a billed failure travels with it). */
export function withUsage(error: PipelineError, usage: TokenUsage | undefined): PipelineError {
  if (usage === undefined) return error;
  return new PipelineError(error.errorClass, error.message, { retryAfterMs: error.retryAfterMs, httpStatus: error.httpStatus, usage, cause: error.cause });
}

/**
 * Turns anything thrown by a port into a {@link PipelineError}. An unclassified
 * error is a bug in an adapter, but it must not crash the stream: it is treated as
 * `network` (retryable) so the budget, not an exception, decides what happens.
 */
export function toPipelineError(error: unknown, fallback: ErrorClass = 'network'): PipelineError {
  if (error instanceof PipelineError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new PipelineError(fallback, message, { cause: error });
}
