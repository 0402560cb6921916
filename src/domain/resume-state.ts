/**
 * What the database knows about a slot when a job is (re)loaded. The engine
 * starts from this, so a restart neither re-fills a filled slot nor resets the
 * attempt count (the budget is not reset by a crash).
 */
export interface SlotState {
  /** The attach id that filled the slot, or null when it is still owed. */
  readonly attachId: string | null;
  /** Attempts already started for this slot (including ones that never finished). */
  readonly attemptsUsed: number;
}

/** Per stage, one entry per slot (`length === quantity`). */
export type StageState = readonly SlotState[];

/** A fresh stage: nothing filled, nothing spent. */
export function freshStageState(quantity: number): StageState {
  return Array.from({ length: quantity }, () => ({ attachId: null, attemptsUsed: 0 }));
}
