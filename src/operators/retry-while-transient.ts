import { asyncScheduler, retry, throwError, timer, type MonoTypeOperatorFunction, type SchedulerLike } from 'rxjs';
import { fullJitterBackoff } from '../engine/full-jitter-backoff.js';
import type { RandomSource } from '../domain/random.js';

/** Settings of {@link retryWhileTransient}. */
export interface RetryWhileTransientConfig {
  /** Whether an error means "not now" (the connection went away), not "never". */
  readonly isTransient: (error: unknown) => boolean;
  /** Ceiling of the first pause, ms. Default 250. */
  readonly baseMs?: number;
  /** Longest pause, ms. Default 5,000. */
  readonly maxMs?: number;
  /** Default `Math.random`. */
  readonly random?: RandomSource;
  /** Told before each pause (for a log line). */
  readonly onRetry?: (error: unknown, retry: number, delayMs: number) => void;
  readonly scheduler?: SchedulerLike;
}

/**
 * Resubscribes to the source after a transient error, with full-jitter exponential pauses
 * (`random() x min(maxMs, baseMs x 2^(n-1))`), for as long as it takes; any other error is
 * passed on at once. For idempotent work that cannot go on without the database (recording
 * an attempt start, committing a delivery): a lost connection is waited out instead of
 * failing the attempt, which would cost a budget unit and, for a delivery, a paid image.
 * Unsubscribing stops the waiting (a run that is shut down or lost its lease).
 *
 * The source must be cold and idempotent: each resubscription runs it again.
 *
 * ```
 * source   --#          --#              --a|      # = transient error
 * result   ------(wait)-----(longer wait)--a|
 * source   --x                                     x = any other error
 * result   --x
 * ```
 */
export function retryWhileTransient<T>(config: RetryWhileTransientConfig): MonoTypeOperatorFunction<T> {
  const baseMs = config.baseMs ?? 250;
  const maxMs = config.maxMs ?? 5_000;
  const random = config.random ?? Math.random;
  const scheduler = config.scheduler ?? asyncScheduler;
  return retry({
    delay: (error: unknown, retryCount: number) => {
      if (!config.isTransient(error)) return throwError(() => error);
      const delayMs = fullJitterBackoff(retryCount, undefined, random, { baseMs, maxMs });
      config.onRetry?.(error, retryCount, delayMs);
      return timer(delayMs, scheduler);
    },
  });
}
