import { describe, expect, it } from 'vitest';
import { MAX_CREDITS, parseCreditAmount } from '../../src/domain/credit-amount.js';

describe('parseCreditAmount', () => {
  it.each([
    ['1', 1],
    ['7', 7],
    ['2147483647', 2 ** 31 - 1],
    ['2147483648', 2 ** 31],
    ['4294967296', 2 ** 32],
    ['9007199254740991', MAX_CREDITS],
  ])('%j is the amount %d', (text, amount) => {
    expect(parseCreditAmount(text)).toEqual({ amount });
  });

  it.each(['0x10', '1e3', ' 7', '7 ', '+7', '07', '0', '00', '-1', '-0', '1.5', '1.0', '1_000', '1,000', '', 'Infinity', 'NaN', '\u0663', '\uff17', '7\n'])(
    '%j is not an amount: the rule says decimal digits',
    (text) => {
      const result = parseCreditAmount(text);
      expect(result).toHaveProperty('rule');
      expect((result as { rule: string }).rule).toMatch(/decimal digits/);
    },
  );

  it.each(['9007199254740992', '9007199254740993', '10000000000000000', '99999999999999999999'])('%j is beyond 2^53-1: refused, not rounded', (text) => {
    expect(parseCreditAmount(text)).toEqual({ rule: `must be at most 9007199254740991 (2^53-1), got ${text}` });
  });
});
