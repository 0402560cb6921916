import type { SchedulerLike } from 'rxjs';
import { ConcurrencyLimiter, type Permit } from './concurrency-limiter.js';
import type { ProviderLimiter } from './provider-limiter.js';

/** An {@link AdaptiveConcurrencyLimiter}'s settings; the gates are the base limiter's. */
export interface AdaptiveConcurrencyConfig {
  /** The configured ceiling, and the starting limit. */
  readonly max: number;
  /** Floor of the limit. Default 1. */
  readonly min?: number;
  /** Starts per minute (the base limiter's token bucket). Default none. */
  readonly maxPerMinute?: number | undefined;
  /** Permits out at once per user. Default none. */
  readonly userCap?: number | undefined;
  /** Time source of the rate gate. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike | undefined;
}

/**
 * A {@link ConcurrencyLimiter} whose limit follows AIMD, as TCP does: a
 * `rate_limited` outcome halves it (not below `min`), and every `limit` successes
 * add one back, up to `max`.
 *
 * Many attempts that were in flight together all see the same 429 burst; only the
 * first of them that started under the current limit cuts it, so one burst halves
 * the limit once instead of collapsing it to `min`.
 *
 * ```
 * max 8: 8 ─429─► 4 ─429 (same epoch, ignored)─► 4 ─4 successes─► 5 ...
 * ```
 *
 * Permits are handed out by fair share, with the optional per-user cap and start-rate
 * gate of {@link ConcurrencyLimiter}; the AIMD moves only the limit.
 *
 * @example
 * const limiter = new AdaptiveConcurrencyLimiter({ max: 8, maxPerMinute: 600, userCap: 4 });
 * runEngine(job, ports, { globalLimiter: limiter });
 */
export class AdaptiveConcurrencyLimiter extends ConcurrencyLimiter implements ProviderLimiter {
  readonly max: number;
  readonly min: number;
  #epoch = 0;
  #successes = 0;

  constructor(config: AdaptiveConcurrencyConfig) {
    super({ limit: config.max, maxPerMinute: config.maxPerMinute, userCap: config.userCap, scheduler: config.scheduler });
    this.max = config.max;
    this.min = Math.max(1, Math.min(config.min ?? 1, config.max));
  }

  protected override get epoch(): number {
    return this.#epoch;
  }

  /** A call that started with `permit` was rate limited: halve the limit once per epoch. */
  onRateLimited(permit: Permit): void {
    if (permit.epoch !== this.#epoch) return;
    this.#epoch++;
    this.#successes = 0;
    this.setLimit(Math.max(this.min, Math.floor(this.limit / 2)));
  }

  /** A call succeeded: additive increase, one step per `limit` successes. */
  onSuccess(): void {
    if (this.limit >= this.max) return;
    this.#successes++;
    if (this.#successes >= this.limit) {
      this.#successes = 0;
      this.#epoch++;
      this.setLimit(this.limit + 1);
    }
  }
}
