import { Observable } from 'rxjs';

/** Handed to the work when it gets to run; `epoch` identifies the limit it started under. */
export interface Permit {
  readonly epoch: number;
}

/**
 * Runs Observables with at most `limit` of them subscribed at once, first come first
 * served. Shared by many streams (every stage of a job, every job of a worker), which
 * `mergeMap`'s own concurrency argument cannot be.
 *
 * `run(work)` returns a cold Observable: on subscribe it waits for a permit, then
 * subscribes `work(permit)`; the permit is returned when that completes, errors or
 * is unsubscribed. Unsubscribing while still queued just leaves the queue.
 *
 * ```
 * limit 1:  run(a) ──a──a|
 *           run(b)        ──b|      (b waits for a's permit)
 * ```
 */
export class ConcurrencyLimiter {
  #active = 0;
  #draining = false;
  readonly #queue: Array<() => void> = [];
  #limit: number;

  constructor(limit: number) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`concurrency limit must be a positive integer, got ${limit}`);
    this.#limit = limit;
  }

  /** How many permits may be out at once right now. */
  get limit(): number {
    return this.#limit;
  }

  protected setLimit(limit: number): void {
    this.#limit = limit;
    this.#drain();
  }

  /** Permits currently out. */
  get active(): number {
    return this.#active;
  }

  /** Subscribers waiting for a permit. */
  get waiting(): number {
    return this.#queue.length;
  }

  /** Identifies the current limit; subclasses bump it when the limit changes. */
  protected get epoch(): number {
    return 0;
  }

  run<T>(work: (permit: Permit) => Observable<T>): Observable<T> {
    return new Observable<T>((subscriber) => {
      let state: 'queued' | 'running' | 'done' = 'queued';
      const release = () => {
        if (state !== 'running') return;
        state = 'done';
        this.#active--;
        this.#drain();
      };
      const start = () => {
        state = 'running';
        this.#active++;
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
      this.#queue.push(start);
      this.#drain();
      return () => {
        if (state === 'queued') {
          const at = this.#queue.indexOf(start);
          if (at >= 0) this.#queue.splice(at, 1);
          state = 'done';
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
      while (this.#active < this.#limit && this.#queue.length > 0) this.#queue.shift()!();
    } finally {
      this.#draining = false;
    }
  }
}
