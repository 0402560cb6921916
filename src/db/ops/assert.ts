/** Credit amounts and counts are int4 columns: refuse anything else before SQL does. */
export function assertCount(name: string, value: number, min = 0): void {
  if (!Number.isSafeInteger(value) || value < min || value > 2_147_483_647) {
    throw new RangeError(`${name} must be an integer between ${min} and 2147483647, got ${value}`);
  }
}
