import type { Logger } from 'pino';
import type { AttemptFailedEvent, PipelineEvent, SlotDeliveredEvent } from '../domain/events.js';
import { attemptFailedNotification, finishAttempt, retryTransient, type Database } from '../db/index.js';

/** Tries of one attempt record when the connection is lost: pauses of 0.2, 0.4, ... 2.2 s, about 13 s in all. */
export const ATTEMPT_RECORD_TRIES = 12;

/** How an attempt ended, as the `attempts` table and the metrics say it. */
export type AttemptEnd = 'delivered' | 'failed' | 'abandoned';

/**
 * How the attempt an event ends ended. An attempt aborted because the run was stopped
 * (SIGINT/SIGTERM, lost lease: `shuttingDown`) is `abandoned` like one a dead process
 * left, not a provider failure; a user's cancel stays a `cancelled` failure (the job ends there).
 */
export function attemptEndOf(event: AttemptFailedEvent | SlotDeliveredEvent, shuttingDown: boolean): AttemptEnd {
  if (event.type === 'slot:delivered') return 'delivered';
  return shuttingDown && event.errorClass === 'cancelled' ? 'abandoned' : 'failed';
}

/**
 * Writes how each attempt ended (`attempts` row: outcome, error class, HTTP status,
 * latency, usage of every answer, the model and estimated cost; a failure also to the job's event log, in the same transaction),
 * in event order and off the event path: the events never wait for these writes, a
 * write that lost its connection is tried again for about 13 s ({@link ATTEMPT_RECORD_TRIES}),
 * a failed write is logged and the next goes on. `flush` waits for the
 * writes so far: the run calls it before the job is finished, so statistics are complete.
 *
 * ```
 * events   ──f1──d2──────f3──────F
 * writes   ──[f1][d2]────[f3]          one at a time, in order
 * flush                          └─ resolves after [f3]
 * ```
 *
 * @example
 * const log = new AttemptLog(database, logger);
 * events$.pipe(tap((event) => log.record(event, stopped)));
 * await log.flush();
 */
export class AttemptLog {
  #tail: Promise<void> = Promise.resolve();
  constructor(
    private readonly database: Database,
    private readonly logger: Logger | undefined,
  ) {}

  /**
   * Queues the write of an `attempt:failed` or `slot:delivered` event; other events are ignored.
   *
   * @param shuttingDown whether the run was stopped (SIGINT/SIGTERM, lost lease): see {@link attemptEndOf}.
   */
  record(event: PipelineEvent, shuttingDown: boolean): void {
    if (event.type !== 'attempt:failed' && event.type !== 'slot:delivered') return;
    const failed = event.type === 'attempt:failed';
    if (failed) {
      this.logger?.debug({ stage: event.stage, slot: event.slot, attempt: event.attempt, errorClass: event.errorClass, message: event.message, willRetry: event.willRetry, delayMs: event.delayMs }, 'attempt failed');
    }
    const outcome = attemptEndOf(event, shuttingDown);
    const write = () =>
      retryTransient(() => finishAttempt(this.database, {
        jobId: event.jobId,
        stageIndex: event.stage,
        slotIndex: event.slot,
        attempt: event.attempt,
        outcome,
        errorClass: failed ? event.errorClass : null,
        httpStatus: failed ? event.httpStatus : null,
        message: failed ? event.message : null,
        latencyMs: event.latencyMs,
        // A failed answer's usage too: safety blocks and imageless answers are billed.
        usage: event.usage ?? null,
        cost: event.cost,
        // A failure goes to the job's event log with its row (a delivery is logged by `deliverSlot`).
        event: failed && outcome === 'failed' ? attemptFailedNotification(event) : undefined,
      }), ATTEMPT_RECORD_TRIES);
    this.#tail = this.#tail.then(write).catch((error: unknown) => this.logger?.warn({ err: error }, 'attempt record failed'));
  }

  /** Resolves when every write queued so far is done (a failed one included); never rejects. */
  flush(): Promise<void> {
    return this.#tail;
  }
}
