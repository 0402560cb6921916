/** A fresh stage: nothing filled, nothing spent. */
export function freshStageState(quantity) {
    return Array.from({ length: quantity }, () => ({ attachId: null, attemptsUsed: 0 }));
}
