import type { Logger } from 'pino';
import type { AttemptFailedEvent, PipelineEvent, SlotDeliveredEvent } from '../domain/events.js';
import { attemptFailedNotification, finishAttempt, finishAttempts, retryTransient, type Database, type FinishAttemptOptions } from '../db/index.js';

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
 * The record gap of a stored run (the `gapMs` of {@link AttemptLog}), ms: a run delivering
 * ~30 images a second writes its attempts' records about eight to a statement (about two with
 * a 50 ms gap, one each without; BENCHMARKS.md 11F, 11G). A crash within it leaves those
 * attempts `started`, as a crash between an attempt's end and its record always could: on
 * resume one whose delivery committed becomes `delivered` (its attach record says so), the
 * others `abandoned`; their latency, usage and cost are not recorded. `flush` (the run's end)
 * does not wait for it.
 */
export const RUN_ATTEMPT_RECORD_GAP_MS = 250;

/** Most records one write takes: the statement's text (and its prepared plan) differs by row count. */
export const ATTEMPT_RECORDS_PER_WRITE = 16;

/**
 * Writes how each attempt ended (`attempts` row: outcome, error class, HTTP status,
 * latency, usage of every answer, the model and estimated cost; a failure also to the job's event log, in the same transaction),
 * in event order and off the event path: the events never wait for these writes, a
 * write that lost its connection is tried again for about 13 s ({@link ATTEMPT_RECORD_TRIES}),
 * a failed write is logged and the next goes on. `flush` waits for the
 * writes so far: the run calls it before the job is finished, so statistics are complete.
 *
 * One write at a time. The records that arrived while a write ran (and, with a `gapMs`, within
 * that long after it) go in the next one, in one statement (`finishAttempts`, up to
 * {@link ATTEMPT_RECORDS_PER_WRITE}); a failure with its event is a write of its own (its
 * transaction appends the event). A busy run writes a fraction of a statement per delivered
 * image instead of one (BENCHMARKS.md 11D, 11F).
 *
 * ```
 * events   ──f1──d2─d3─d4───f5──────F
 * writes   ──[f1][d2]─[d3 d4][f5]          one at a time, in order; d3 and d4 piled up: one statement
 * flush                           └─ resolves after [f5]
 * ```
 *
 * @example
 * const log = new AttemptLog(database, logger);
 * events$.pipe(tap((event) => log.record(event, stopped)));
 * await log.flush();
 */
export class AttemptLog {
  readonly #queue: FinishAttemptOptions[] = [];
  #writing: Promise<void> | null = null;
  readonly #gapMs: number;
  /** Ends the gap being waited now (set while one is). */
  #cutGap: (() => void) | null = null;
  /** A flush is waiting: no more gaps until the queue is empty. */
  #hurry = false;
  /**
   * @param options.gapMs after a write, how long the records that come wait for one another
   *   before the next (ms; default 0: the next write starts at once). A record that comes when
   *   nothing was written for that long is written at once. `runStoredJob` uses
   *   {@link RUN_ATTEMPT_RECORD_GAP_MS}.
   */
  constructor(
    private readonly database: Database,
    private readonly logger: Logger | undefined,
    options: { readonly gapMs?: number } = {},
  ) {
    this.#gapMs = options.gapMs ?? 0;
  }

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
    this.#queue.push({
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
    });
    this.#writing ??= this.#writeQueued();
  }

  /** Resolves when every write queued so far is done (a failed one included); never rejects. Writes what is queued without waiting for the gap. */
  flush(): Promise<void> {
    if (this.#writing === null) return Promise.resolve();
    this.#hurry = true;
    this.#cutGap?.();
    return this.#writing;
  }

  /** Writes what is queued, oldest first, until nothing is; then `#writing` is null again (in the same turn). */
  async #writeQueued(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const first = this.#queue[0]!;
        const count = first.event !== undefined ? 1 : this.#plainRecordsAhead();
        const records = this.#queue.splice(0, count);
        const write = first.event !== undefined ? () => finishAttempt(this.database, first) : () => finishAttempts(this.database, records);
        await retryTransient(write, ATTEMPT_RECORD_TRIES).catch((error: unknown) => this.logger?.warn({ err: error }, 'attempt record failed'));
        // Let the records that come next pile up for the next write (nothing waits for a record but `flush`, which cuts it short).
        if (this.#gapMs > 0 && !this.#hurry && this.#queue.length < ATTEMPT_RECORDS_PER_WRITE) await this.#gap();
      }
    } finally {
      this.#writing = null;
      this.#hurry = false;
    }
  }

  #gap(): Promise<void> {
    return new Promise<void>((resolve) => {
      const end = () => {
        clearTimeout(timer);
        this.#cutGap = null;
        resolve();
      };
      const timer = setTimeout(end, this.#gapMs);
      this.#cutGap = end;
    });
  }

  /** How many records from the queue's head have no event (up to {@link ATTEMPT_RECORDS_PER_WRITE}). */
  #plainRecordsAhead(): number {
    let count = 0;
    while (count < this.#queue.length && count < ATTEMPT_RECORDS_PER_WRITE && this.#queue[count]!.event === undefined) count++;
    return count;
  }
}
