import { ReplaySubject } from 'rxjs';
import type { ErrorClass } from '../domain/error-class.js';
import type { Progress } from '../domain/events.js';
import { haltsJob } from './halts-job.js';

/**
 * What the stages of one job share: the job-wide halt (an `auth` or `quota_exhausted`
 * failure stops every stage), the cancel signal, and the job's progress counter.
 *
 * Stages change it only through its methods, so every write says what happened
 * (`recordDelivery`, `recordFailure`, `halt`, `cancel`); the counters are read-only
 * from outside.
 *
 * ```
 * recordFailure('overloaded')  -> nothing (a stage matter)
 * recordFailure('auth')        -> halt('auth'): halted$ emits once, haltedBy = 'auth'
 * cancel()                     -> cancelled = true, halt('cancelled') (a no-op if already halted)
 * ```
 */
export class JobControl {
  /** Emits (and replays to late subscribers) once the job must stop taking new slots. */
  readonly halted$ = new ReplaySubject<void>(1);
  #haltedBy: ErrorClass | null = null;
  #cancelled = false;
  #costCapped = false;
  #delivered: number;

  constructor(
    readonly jobId: string,
    /** Images the whole job owes (every stage's quantity). */
    readonly total: number,
    /** Images already delivered before this run (resume). */
    alreadyDelivered: number,
  ) {
    this.#delivered = alreadyDelivered;
  }

  /** Images delivered so far, this run and earlier ones. */
  get delivered(): number {
    return this.#delivered;
  }

  /** The class that halted the job (`cancelled` for cancel and shutdown), or null. */
  get haltedBy(): ErrorClass | null {
    return this.#haltedBy;
  }

  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** Counts one delivered image; returns the job's progress after it (monotone). */
  recordDelivery(): Progress {
    this.#delivered++;
    return { delivered: this.#delivered, total: this.total };
  }

  /** A failed attempt of any stage: a job-wide class ({@link haltsJob}) halts the job. */
  recordFailure(errorClass: ErrorClass): void {
    if (haltsJob(errorClass)) this.halt(errorClass);
  }

  /** Stops every stage from starting new attempts; in-flight attempts finish. The first halt wins. */
  halt(errorClass: ErrorClass): void {
    if (this.#haltedBy !== null) return;
    this.#haltedBy = errorClass;
    this.halted$.next();
  }

  /** Whether the job's spend cap stopped new attempts (`capCost`): its short stages end `cost_cap`. */
  get costCapped(): boolean {
    return this.#costCapped;
  }

  /**
   * The next attempt would pass the job's spend cap (`CostCap`): no stage starts another
   * one; in-flight attempts finish. Not a failure, so `haltedBy` stays as it is; a no-op
   * once the job is halted or capped.
   */
  capCost(): void {
    if (this.#haltedBy !== null || this.#costCapped) return;
    this.#costCapped = true;
    this.halted$.next();
  }

  /** Marks the job cancelled and stops new attempts in every stage. */
  cancel(): void {
    this.#cancelled = true;
    this.halt('cancelled');
  }
}
