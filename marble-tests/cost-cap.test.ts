import { describe, expect, it } from 'vitest';
import { pricingFor } from '../src/domain/price-table.js';
import { simulate, virtualOptions } from './support.js';

// One model at $0.04 an image, no input price: every attempt is estimated (and, answering
// without usage, costs) exactly $0.04.
const pricing = pricingFor({ m: { perImageUsd: { default: 0.04 }, inputPerMillionUsd: 0 } }, 'm');

describe('the spend cap (maxCostUsd)', () => {
  it('stops new attempts once the next would pass the cap; in-flight ones finish; the stage ends short cost_cap', () => {
    // Cap $0.10: two attempts in flight hold $0.08; when slot 0 answers ($0.04 spent, $0.04
    // in flight) the next one would make $0.12, so slot 2 is never sent; slot 1 still finishes.
    const { lines, calls } = simulate({
      quantities: [4],
      script: (r) => ({ marble: r.slotIndex === 1 ? '----i|' : '--i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 2, pricing }),
      job: { maxCostUsd: 0.1 },
    });
    expect(calls).toEqual(['0.0#1', '0.1#1']);
    expect(lines).toEqual([
      '0 job:started 0/4',
      '0 start 0.0#1',
      '0 start 0.1#1',
      '2 deliver 0.0#1 a00 1/4',
      '4 deliver 0.1#1 a01 2/4',
      '4 stage 0 short 2 cost_cap null',
      '4 job partial [a00,a01]',
      '4 |',
    ]);
  });

  it('below the cap the count is exact: a cap the job fits under changes nothing', () => {
    const { lines } = simulate({
      quantities: [3],
      script: () => ({ marble: '--i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), pricing }),
      job: { maxCostUsd: 0.12 },
    });
    expect(lines.at(-2)).toBe('2 job completed [a00,a01,a02]');
  });

  it('counts what earlier runs spent: a resumed job already at its cap sends nothing', () => {
    const { lines, calls } = simulate({
      quantities: [2],
      script: () => ({ marble: '--i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), pricing }),
      job: { maxCostUsd: 0.1, spentUsd: 0.07 },
    });
    expect(calls).toEqual([]);
    expect(lines).toEqual(['0 job:started 0/2', '0 stage 0 short 2 cost_cap null', '0 job failed []', '0 |']);
  });
});
