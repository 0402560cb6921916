/**
 * Largest credit amount or balance: 2^53-1. Credits are `bigint` columns read back as
 * JS numbers, which are exact only up to `Number.MAX_SAFE_INTEGER`.
 */
export const MAX_CREDITS = Number.MAX_SAFE_INTEGER;

/** Decimal digits, no sign, no leading zero: what a person types as an amount. */
const AMOUNT = /^[1-9][0-9]*$/;

/**
 * Reads a credit amount given as text (the CLI's `credits grant <userId> <amount>`):
 * decimal digits only, 1..{@link MAX_CREDITS}. `Number()` alone would read `0x10`,
 * `1e3`, `" 7"` and `+7` as numbers; none of them is an amount here.
 *
 * @returns the amount, or the rule the text broke (for a field-named error).
 * @example
 * parseCreditAmount('2147483648'); // { amount: 2147483648 }
 * parseCreditAmount('1e3');        // { rule: 'must be a whole number of credits ...' }
 */
export function parseCreditAmount(text: string): { readonly amount: number } | { readonly rule: string } {
  if (!AMOUNT.test(text)) {
    return { rule: `must be a whole number of credits written in decimal digits (1 to ${MAX_CREDITS}, no sign, spaces or leading zeros), got ${JSON.stringify(text)}` };
  }
  // Compared as text first: beyond 2^53 Number() rounds, and a rounded value could pass.
  if (text.length > String(MAX_CREDITS).length || (text.length === String(MAX_CREDITS).length && text > String(MAX_CREDITS))) {
    return { rule: `must be at most ${MAX_CREDITS} (2^53-1), got ${text}` };
  }
  return { amount: Number(text) };
}
