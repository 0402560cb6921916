/** Credit amounts and counts are int4 columns: refuse anything else before SQL does. */
export function assertCount(name, value, min = 0) {
    if (!Number.isSafeInteger(value) || value < min || value > 2_147_483_647) {
        throw new RangeError(`${name} must be an integer between ${min} and 2147483647, got ${value}`);
    }
}
