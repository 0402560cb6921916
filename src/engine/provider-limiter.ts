import type { Observable } from 'rxjs';
import type { Permit } from './concurrency-limiter.js';
import type { Share } from './fair-queue.js';

/**
 * What the engine needs from the process-wide (provider) limiter: permits for the
 * provider calls of every job of a process, handed out by fair share, and the outcomes
 * it adapts to. {@link AdaptiveConcurrencyLimiter} is the one implementation here; a
 * host may plug its own (for example one whose limit a fleet-wide controller sets).
 *
 * `run(work, share)` is cold: on subscribe it waits for a permit, subscribes
 * `work(permit)` and returns the permit when that completes, errors or is
 * unsubscribed; unsubscribed while waiting, it leaves the queue. Each attempt reports
 * its outcome with the permit it ran under: `onRateLimited(permit)` (a 429; the
 * permit's `epoch` lets one burst count once) or `onSuccess()`.
 *
 * ```
 * limit 2: job A (user u1) queues a1 a2 a3, then job B (user u2) queues b1
 * permits  a1 a2 ── a1 ends ──► b1 ── a2 ends ──► a3      (b1 does not wait for a3)
 * ```
 *
 * @example
 * const limiter: ProviderLimiter = new AdaptiveConcurrencyLimiter({ max: 8 });
 * limiter.run((permit) => generate$, { userId: 'u1', jobId: 'j1', priority: 0 });
 */
export interface ProviderLimiter {
  /** The configured ceiling of `limit`. */
  readonly max: number;
  /** Permits that may be out at once right now. */
  readonly limit: number;
  /** Permits out. */
  readonly active: number;
  /** Subscribers waiting for a permit. */
  readonly waiting: number;
  /** `work` under a permit, queued by `share` (default: one FIFO for every caller without one). */
  run<T>(work: (permit: Permit) => Observable<T>, share?: Share): Observable<T>;
  /** A call that ran under `permit` was rate limited (`rate_limited`). */
  onRateLimited(permit: Permit): void;
  /** A call succeeded. */
  onSuccess(): void;
}
