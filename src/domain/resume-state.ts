/**
 * What the database knows about a slot when a job is (re)loaded. The engine
 * starts from this, so a restart neither re-fills a filled slot nor resets the
 * budget: attempts a provider answered stay charged across restarts, while an
 * attempt cut off by a dead process (`abandoned`) costs no budget.
 */
export interface SlotState {
  /** The attach id that filled the slot, or null when it is still owed. */
  readonly attachId: string | null;
  /**
   * Highest attempt number started for this slot (abandoned ones included): the next
   * attempt is numbered `attemptsUsed + 1`, so attempt numbers stay unique.
   */
  readonly attemptsUsed: number;
  /**
   * Attempts charged to the retry budget: the ones that ended (delivered or failed),
   * not the ones abandoned by a process that died or shut down. Omitted = `attemptsUsed`.
   */
  readonly attemptsCharged?: number;
}

/** Per stage, one entry per slot (`length === quantity`). */
export type StageState = readonly SlotState[];

/** A fresh stage: nothing filled, nothing spent. */
export function freshStageState(quantity: number): StageState {
  return Array.from({ length: quantity }, () => ({ attachId: null, attemptsUsed: 0 }));
}
