import { MAX_CREDITS } from '../../domain/credit-amount.js';

/** Counts (images, attempts, bytes) are int4 columns: refuse anything else before SQL does. */
export function assertCount(name: string, value: number, min = 0): void {
  if (!Number.isSafeInteger(value) || value < min || value > 2_147_483_647) {
    throw new RangeError(`${name} must be an integer between ${min} and 2147483647, got ${value}`);
  }
}

/** Credit amounts (grants, prices, reservations) are int8 columns kept within {@link MAX_CREDITS}. */
export function assertAmount(name: string, value: number, min = 0): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new RangeError(`${name} must be an integer between ${min} and ${MAX_CREDITS}, got ${value}`);
  }
}
