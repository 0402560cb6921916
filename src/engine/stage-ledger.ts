import type { ErrorClass } from '../domain/error-class.js';
import type { Progress } from '../domain/events.js';
import type { StageState } from '../domain/resume-state.js';
import type { Shortfall, StageResult } from '../domain/result.js';
import { haltsJob } from './halts-job.js';

/** Default of {@link RetryBudget.maxSafetyBlocksInRow} (`IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE`). */
export const DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE = 3;

/** How much a stage may spend on failures. */
export interface RetryBudget {
  /** Attempts one slot may use in all, the first included. */
  readonly maxAttemptsPerSlot: number;
  /** Replacement attempts (attempt > 1) the whole stage may use. */
  readonly maxReplacementsPerStage: number;
  /**
   * `safety_blocked` failures in a row (no delivery between them) after which the stage
   * stops, short with reason `safety_blocked`: each block is billed, and a prompt that the
   * output filter keeps catching will mostly be caught again. Default
   * {@link DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE}.
   */
  readonly maxSafetyBlocksInRow?: number;
}

/** One admitted request: which slot, and the number its attempt will carry. */
export interface SlotRequest {
  readonly slot: number;
  readonly attempt: number;
}

/** What the job knows that decides a stage's shortfall reason (a {@link JobControl} fits). */
export interface JobOutcome {
  readonly cancelled: boolean;
  readonly haltedBy: ErrorClass | null;
  /** The job's spend cap stopped new attempts (`JobControl.capCost`). Absent: false. */
  readonly costCapped?: boolean;
}

/** A classified failure, as far as the ledger cares. */
export interface FailureClass {
  readonly errorClass: ErrorClass;
  readonly retryable: boolean;
}

/** What a failed attempt leads to. */
export interface FailureVerdict {
  /** This failure stopped the stage (the first non-retryable, not job-wide, failure). */
  readonly stopsStage: boolean;
  /** The slot's replacement, admitted and charged; null when the slot gets no more attempts. */
  readonly replacement: SlotRequest | null;
}

/**
 * The books of one stage: which slots are filled, what each slot and the stage have
 * spent, why the stage stopped. Pure: no RxJS, no clock; `fillSlots` drives it and
 * asks it every budget question, so the budget rules live here and only here.
 *
 * Two counts per slot: `attemptsUsed` numbers the next attempt (abandoned ones included,
 * so numbers stay unique); `attemptsCharged` is what the budget sees (an attempt
 * abandoned by a dead process is not a provider failure and costs nothing). The stage
 * budget is counted from charged attempts: every charged attempt beyond a slot's first
 * was a replacement, filled slot or not, so a restart does not refund it.
 *
 * ```
 * quantity 2, maxAttemptsPerSlot 3, maxReplacementsPerStage 1, resume [used 2 charged 0, used 1 charged 1]:
 * initialRequests()  -> [{slot 0, attempt 3}, {slot 1, attempt 2}]   (slot 1's is a replacement: stage budget 1 -> 0)
 * start(0, 3); fail(0, overloaded)  -> replacement null             (stage budget spent)
 * start(1, 2); deliver(1, 'a')      -> true;  deliver(1, 'b') -> false (a slot is filled once)
 * result(job)  -> delivered 1, shortfall { count 1, budget_exhausted, overloaded }
 * ```
 */
export class StageLedger {
  readonly #attachIds: (string | null)[];
  readonly #attemptsUsed: number[];
  readonly #attemptsCharged: number[];
  #delivered: number;
  #replacementsUsed: number;
  #stoppedBy: ErrorClass | null = null;
  /** Why `#stoppedBy` stopped the stage: a non-retryable class, or too many safety blocks in a row. */
  #stopReason: 'non_retryable' | 'safety_blocked' = 'non_retryable';
  #safetyBlocksInRow = 0;
  #lastErrorClass: ErrorClass | null = null;

  constructor(
    readonly index: number,
    readonly quantity: number,
    readonly budget: RetryBudget,
    state: StageState,
  ) {
    if (state.length !== quantity) throw new RangeError(`resume state has ${state.length} slots, the stage has quantity ${quantity}`);
    this.#attachIds = state.map((s) => s.attachId);
    this.#attemptsUsed = state.map((s) => s.attemptsUsed);
    this.#attemptsCharged = state.map((s) => s.attemptsCharged ?? s.attemptsUsed);
    this.#delivered = this.#attachIds.filter((id) => id !== null).length;
    this.#replacementsUsed = this.#attemptsCharged.reduce((sum, charged) => sum + Math.max(0, charged - 1), 0);
  }

  /** Slots filled so far. */
  get delivered(): number {
    return this.#delivered;
  }

  /** The stage's progress: delivered of quantity. */
  get progress(): Progress {
    return { delivered: this.#delivered, total: this.quantity };
  }

  /** Replacement attempts charged to the stage so far (restored ones included). */
  get replacementsUsed(): number {
    return this.#replacementsUsed;
  }

  /** The class that stopped this stage's new requests (a non-retryable one, or `safety_blocked` too often in a row), or null. */
  get stoppedBy(): ErrorClass | null {
    return this.#stoppedBy;
  }

  /** The class of the last failure recorded, or null. */
  get lastErrorClass(): ErrorClass | null {
    return this.#lastErrorClass;
  }

  /**
   * Admits every unfilled slot the budget allows, in slot order, numbered after the
   * slot's used attempts. Call it once: admitting charges the budget. `except`: slots
   * whose attempt is already out (a batch an earlier run sent), neither admitted nor charged.
   */
  initialRequests(except?: ReadonlySet<number>): SlotRequest[] {
    const requests: SlotRequest[] = [];
    for (let slot = 0; slot < this.quantity; slot++) {
      if (except?.has(slot) === true) continue;
      if (this.#attachIds[slot] === null && this.admit(slot)) requests.push({ slot, attempt: (this.#attemptsUsed[slot] ?? 0) + 1 });
    }
    return requests;
  }

  /**
   * Whether `slot` may have one more attempt. A replacement (the slot's charged
   * attempts are not 0) also needs, and takes, one unit of the stage budget.
   */
  admit(slot: number): boolean {
    const next = (this.#attemptsCharged[slot] ?? 0) + 1;
    if (next > this.budget.maxAttemptsPerSlot) return false;
    if (next > 1) {
      if (this.#replacementsUsed >= this.budget.maxReplacementsPerStage) return false;
      this.#replacementsUsed++;
    }
    return true;
  }

  /** An attempt of `slot` got its permits and is sent: it is used and charged. */
  start(slot: number, attempt: number): void {
    this.#attemptsUsed[slot] = Math.max(this.#attemptsUsed[slot] ?? 0, attempt);
    this.#attemptsCharged[slot] = (this.#attemptsCharged[slot] ?? 0) + 1;
  }

  /** Fills `slot` with `attachId`; returns false (and changes nothing) if it is already filled. */
  deliver(slot: number, attachId: string): boolean {
    if (this.#attachIds[slot] !== null) return false;
    this.#safetyBlocksInRow = 0;
    this.#attachIds[slot] = attachId;
    this.#delivered++;
    return true;
  }

  /**
   * Records a failed attempt of `slot` and decides what follows. A non-retryable class
   * that is not job-wide stops the stage (the first one is its reason); a retryable one
   * gets a replacement if the stage is still taking requests (`halted`: the caller's
   * view of the job and of its own teardown) and the budget admits it. The
   * `maxSafetyBlocksInRow`-th `safety_blocked` failure since the last delivery also stops
   * the stage (reason `safety_blocked`); other failures (rate limits, timeouts) neither
   * count nor break the row: they say nothing about what the filter thinks of the prompt.
   */
  fail(slot: number, error: FailureClass, halted: boolean): FailureVerdict {
    this.#lastErrorClass = error.errorClass;
    if (error.errorClass === 'safety_blocked') this.#safetyBlocksInRow++;
    const tooManySafetyBlocks = this.#safetyBlocksInRow >= (this.budget.maxSafetyBlocksInRow ?? DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE);
    const stopsStage = this.#stoppedBy === null && ((!error.retryable && !haltsJob(error.errorClass)) || (error.errorClass === 'safety_blocked' && tooManySafetyBlocks));
    if (stopsStage) {
      this.#stoppedBy = error.errorClass;
      this.#stopReason = error.retryable ? 'safety_blocked' : 'non_retryable';
    }
    const replaced = error.retryable && !halted && this.#stoppedBy === null && this.admit(slot);
    return { stopsStage, replacement: replaced ? { slot, attempt: (this.#attemptsUsed[slot] ?? 0) + 1 } : null };
  }

  /** Why the stage is short, or null when every slot is filled. */
  shortfall(job: JobOutcome): Shortfall | null {
    const count = this.quantity - this.#delivered;
    if (count === 0) return null;
    if (job.cancelled) return { count, reason: 'cancelled', errorClass: 'cancelled' };
    if (this.#stoppedBy !== null) return { count, reason: this.#stopReason, errorClass: this.#stoppedBy };
    if (job.haltedBy !== null) {
      // The stage that met the job-wide failure says so; the others were aborted by it.
      return this.#lastErrorClass === job.haltedBy
        ? { count, reason: 'non_retryable', errorClass: job.haltedBy }
        : { count, reason: 'job_aborted', errorClass: job.haltedBy };
    }
    // The cap stopped attempts the budget would still have allowed.
    if (job.costCapped === true) return { count, reason: 'cost_cap', errorClass: null };
    return { count, reason: 'budget_exhausted', errorClass: this.#lastErrorClass };
  }

  /** The stage's result: attach ids in slot order (missing slots skipped) and its shortfall. */
  result(job: JobOutcome): StageResult {
    return {
      index: this.index,
      quantity: this.quantity,
      delivered: this.#delivered,
      attachIds: this.#attachIds.filter((id): id is string => id !== null),
      shortfall: this.shortfall(job),
    };
  }
}
