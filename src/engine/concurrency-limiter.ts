import { Observable, asyncScheduler, type SchedulerLike, type Subscription } from 'rxjs';
import { FairQueue, type Share } from './fair-queue.js';

/** Handed to the work when it gets to run; `epoch` identifies the limit it started under. */
export interface Permit {
  readonly epoch: number;
}

/** A {@link ConcurrencyLimiter}'s settings; only `limit` is required. */
export interface ConcurrencyLimiterConfig {
  /** Permits out at once (a positive integer). */
  readonly limit: number;
  /**
   * Starts per minute (a token bucket a permit also needs: about one second of burst,
   * `max(1, ceil(perMinute / 60))` tokens, refilled at `perMinute / 60,000` per ms).
   * Default none: starts are limited by `limit` only.
   */
  readonly maxPerMinute?: number | undefined;
  /** Permits out at once per `share.userId` (a positive integer). Default none. */
  readonly userCap?: number | undefined;
  /** Where time comes from (the rate gate only). Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike | undefined;
}

/** The share of callers that give none: all of them are one job of one user, so FIFO. */
export const UNKEYED_SHARE: Share = Object.freeze({ userId: '', jobId: '', priority: 0 });

const MS_PER_MINUTE = 60_000;

/**
 * Runs Observables with at most `limit` of them subscribed at once, handing out permits
 * by fair share ({@link FairQueue}): the highest priority first, then users take turns,
 * then a user's jobs, FIFO within a job. Shared by many streams (every stage of a job,
 * every job of a worker), which `mergeMap`'s own concurrency argument cannot be.
 *
 * `run(work, share)` returns a cold Observable: on subscribe it waits for a permit, then
 * subscribes `work(permit)`; the permit is returned when that completes, errors or is
 * unsubscribed. Unsubscribing while still queued just leaves the queue. `work` throwing
 * is an error of the returned Observable (the permit goes back). Callers that give no
 * share all get {@link UNKEYED_SHARE}: first come first served, as before shares.
 *
 * Two optional gates a permit also needs: `userCap` (at most that many permits out per
 * `share.userId`: a user at its cap is skipped, its waiters keep their place) and
 * `maxPerMinute` (a token bucket on starts: when it is empty the queue waits, on the
 * `scheduler`, for the next token). Both can be changed while running.
 *
 * ```
 * limit 1:          run(a) ──a──a|
 *                   run(b)        ──b|      (b waits for a's permit)
 * limit 2, A then B: A1 A2 A3 A4 queued at 0, B1 B2 at 1, each holds its permit 2 frames
 *                   starts  0: A1 A2   2: B1 A3   4: B2 A4     (A and B take turns)
 * maxPerMinute 60:  starts  0  1000  2000 ...                  (one per second after the burst of 1)
 * ```
 *
 * @example
 * const limiter = new ConcurrencyLimiter({ limit: 8, userCap: 4, maxPerMinute: 600 });
 * limiter.run((permit) => generate$, { userId: 'u1', jobId: 'j1', priority: 0 }).subscribe();
 */
export class ConcurrencyLimiter {
  #active = 0;
  #draining = false;
  readonly #queue = new FairQueue<() => void>();
  readonly #activeByUser = new Map<string, number>();
  readonly #scheduler: SchedulerLike;
  #limit: number;
  #userCap: number | undefined;
  // The rate gate, in units of 1/60,000 token, so a whole number of starts per minute
  // refills a whole number of units per ms: no rounding drift in the wake-up time.
  #perMinute: number | undefined;
  #units = 0;
  #refilledAt = 0;
  #wake: Subscription | undefined;

  constructor(config: number | ConcurrencyLimiterConfig) {
    const { limit, maxPerMinute, userCap, scheduler } = typeof config === 'number' ? { limit: config } : config;
    checkCount('concurrency limit', limit);
    this.#limit = limit;
    this.#scheduler = scheduler ?? asyncScheduler;
    this.#userCap = checkOptionalCount('user cap', userCap);
    this.#setRate(maxPerMinute);
  }

  /** How many permits may be out at once right now. */
  get limit(): number {
    return this.#limit;
  }

  /**
   * Changes the limit: a higher one starts waiters at once, a lower one lets the permits
   * out finish. 0 holds every waiter (a fleet controller that granted this process no
   * share); the constructor still asks for at least 1.
   */
  setLimit(limit: number): void {
    if (!Number.isInteger(limit) || limit < 0) throw new RangeError(`concurrency limit must be a non-negative integer, got ${limit}`);
    this.#limit = limit;
    this.#drain();
  }

  /** Permits out at once per `share.userId`, or `undefined` for no cap. */
  get userCap(): number | undefined {
    return this.#userCap;
  }

  /** Changes the per-user cap (`undefined`: none); permits already out stay out. */
  setUserCap(cap: number | undefined): void {
    this.#userCap = checkOptionalCount('user cap', cap);
    this.#drain();
  }

  /** Starts per minute, or `undefined` for no rate gate. */
  get maxPerMinute(): number | undefined {
    return this.#perMinute;
  }

  /**
   * Changes the rate gate (`undefined`: none). Tokens earned so far are kept, up to the
   * new burst; a gate turned on starts with a full burst.
   */
  setMaxPerMinute(perMinute: number | undefined): void {
    if (perMinute === this.#perMinute) return;
    this.#setRate(perMinute);
    this.#drain();
  }

  /** Permits currently out. */
  get active(): number {
    return this.#active;
  }

  /** Subscribers waiting for a permit. */
  get waiting(): number {
    return this.#queue.size;
  }

  /** Identifies the current limit; subclasses bump it when the limit changes. */
  protected get epoch(): number {
    return 0;
  }

  /**
   * `work` under a permit, queued by `share` (default {@link UNKEYED_SHARE}). Cold: each
   * subscription waits for its own permit; see the class comment for release and order.
   */
  run<T>(work: (permit: Permit) => Observable<T>, share: Share = UNKEYED_SHARE): Observable<T> {
    return new Observable<T>((subscriber) => {
      let state: 'queued' | 'running' | 'done' = 'queued';
      const release = () => {
        if (state !== 'running') return;
        state = 'done';
        this.#active--;
        this.#countUser(share.userId, -1);
        this.#drain();
      };
      const start = () => {
        state = 'running';
        this.#active++;
        this.#countUser(share.userId, +1);
        let inner: Observable<T>;
        try {
          inner = work({ epoch: this.epoch });
        } catch (error) {
          release();
          subscriber.error(error);
          return;
        }
        subscriber.add(
          inner.subscribe({
            next: (value) => subscriber.next(value),
            error: (error: unknown) => {
              release();
              subscriber.error(error);
            },
            complete: () => {
              release();
              subscriber.complete();
            },
          }),
        );
      };
      this.#queue.enqueue(start, share);
      this.#drain();
      return () => {
        if (state === 'queued') {
          this.#queue.remove(start);
          state = 'done';
          // Nobody left to wake for: a pending rate wake-up would only keep the process alive.
          if (this.#queue.isEmpty) this.#cancelWake();
        } else release();
      };
    });
  }

  // A loop, not recursion: work that completes synchronously releases its permit
  // inside start(), and recursing there would grow the stack with the queue (rxjs #3609).
  #drain(): void {
    if (this.#draining) return;
    this.#draining = true;
    try {
      const cap = this.#userCap;
      const eligible = cap === undefined ? undefined : (share: Share) => (this.#activeByUser.get(share.userId) ?? 0) < cap;
      while (this.#active < this.#limit && !this.#queue.isEmpty) {
        if (!this.#hasToken()) {
          this.#wakeForToken();
          break;
        }
        const start = this.#queue.dequeue(eligible);
        if (start === undefined) break; // every waiter's user is at its cap
        if (this.#perMinute !== undefined) this.#units -= MS_PER_MINUTE;
        start();
      }
    } finally {
      this.#draining = false;
    }
  }

  #countUser(userId: string, delta: number): void {
    const count = (this.#activeByUser.get(userId) ?? 0) + delta;
    if (count === 0) this.#activeByUser.delete(userId);
    else this.#activeByUser.set(userId, count);
  }

  #setRate(perMinute: number | undefined): void {
    if (perMinute !== undefined && !(Number.isFinite(perMinute) && perMinute > 0)) {
      throw new RangeError(`maxPerMinute must be a positive number, got ${perMinute}`);
    }
    const wasOn = this.#perMinute !== undefined;
    if (wasOn) this.#refill();
    this.#cancelWake();
    this.#perMinute = perMinute;
    if (perMinute === undefined) return;
    const burst = burstUnits(perMinute);
    this.#units = wasOn ? Math.min(this.#units, burst) : burst;
    this.#refilledAt = this.#scheduler.now();
  }

  #refill(): void {
    const now = this.#scheduler.now();
    const perMinute = this.#perMinute!;
    this.#units = Math.min(burstUnits(perMinute), this.#units + (now - this.#refilledAt) * perMinute);
    this.#refilledAt = now;
  }

  #hasToken(): boolean {
    if (this.#perMinute === undefined) return true;
    this.#refill();
    return this.#units >= MS_PER_MINUTE;
  }

  /** Drains again when the next token is due; at most one wake-up is pending. */
  #wakeForToken(): void {
    if (this.#wake) return;
    const delay = Math.max(1, Math.ceil((MS_PER_MINUTE - this.#units) / this.#perMinute!));
    this.#wake = this.#scheduler.schedule(() => {
      this.#wake = undefined;
      this.#drain();
    }, delay);
  }

  #cancelWake(): void {
    this.#wake?.unsubscribe();
    this.#wake = undefined;
  }
}

/** About one second of starts, at least one: `max(1, ceil(perMinute / 60))` tokens, in units. */
function burstUnits(perMinute: number): number {
  return Math.max(1, Math.ceil(perMinute / 60)) * MS_PER_MINUTE;
}

function checkCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}

function checkOptionalCount(name: string, value: number | undefined): number | undefined {
  if (value !== undefined) checkCount(name, value);
  return value;
}
