import { startAttempt, startAttempts, type Database, type StartAttemptOptions } from '../db/index.js';

/** Most attempt starts one statement takes. */
export const ATTEMPT_STARTS_PER_WRITE = 32;

interface QueuedStart {
  readonly start: StartAttemptOptions;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

/**
 * Records attempt starts (`startAttempt`: before the provider call, so a crash cannot spend
 * the budget twice) with group commit: one statement at a time; the starts that arrive while
 * one is written go together in the next (`startAttempts`, up to {@link ATTEMPT_STARTS_PER_WRITE}).
 * A start that finds nothing being written is written at once, so an idle run waits no
 * longer than before; a busy one (a wave of answers frees a wave of permits) writes a
 * fraction of a statement per attempt instead of one (BENCHMARKS.md 11F).
 *
 * Each caller's promise settles with its own start: resolved once its row is committed;
 * rejected with the statement's error (each caller retries on its own, e.g. while the
 * database is away), or with {@link startAttempt}'s precise error for a slot the job does not
 * owe. Two starts of one slot never share a statement (the second waits for the next).
 *
 * ```
 * start    ──a──b─c─d────────e──
 * writes   ──[a][b c d]──────[e]      one at a time; b, c, d piled up: one statement
 * ```
 */
export class AttemptStarter {
  readonly #queue: QueuedStart[] = [];
  #writing = false;

  constructor(private readonly database: Database) {}

  /** Records `start`; resolves once it is committed. */
  start(start: StartAttemptOptions): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ start, resolve, reject });
      if (!this.#writing) void this.#writeQueued();
    });
  }

  async #writeQueued(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#takeBatch();
        if (batch.length === 1) {
          const [only] = batch;
          await startAttempt(this.database, only!.start).then(only!.resolve, only!.reject);
          continue;
        }
        try {
          const missing = await startAttempts(this.database, batch.map((queued) => queued.start));
          for (const [i, queued] of batch.entries()) {
            // Not a slot the job owes: startAttempt says precisely why.
            if (missing.has(i)) void startAttempt(this.database, queued.start).then(queued.resolve, queued.reject);
            else queued.resolve();
          }
        } catch (error) {
          for (const queued of batch) queued.reject(error);
        }
      }
    } finally {
      this.#writing = false;
    }
  }

  /** The queue's head, up to {@link ATTEMPT_STARTS_PER_WRITE}, stopping before a slot already taken. */
  #takeBatch(): QueuedStart[] {
    const slots = new Set<string>();
    let count = 0;
    while (count < this.#queue.length && count < ATTEMPT_STARTS_PER_WRITE) {
      const { jobId, stageIndex, slotIndex } = this.#queue[count]!.start;
      const slot = `${jobId}\u0000${stageIndex}\u0000${slotIndex}`;
      if (slots.has(slot)) break;
      slots.add(slot);
      count++;
    }
    return this.#queue.splice(0, count);
  }
}
