import { describe, expect, it } from 'vitest';
import { simulate, virtualOptions } from './support.js';

describe('safety blocks in a row stop a stage (IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE, StageLedger)', () => {
  it('the third safety block in a row stops the stage: no more requests, shortfall safety_blocked; other stages go on', () => {
    const { lines, calls } = simulate({
      quantities: [2, 1],
      script: (r) => (r.stageIndex === 0 ? { marble: '-#', error: 'safety_blocked' } : { marble: '---i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 1 }),
    });
    // Stage 0: three calls in all (the budget alone would allow 5 per slot); slot 1's
    // replacement, waiting out its backoff (due at 7), is dropped unsent by the stop.
    expect(calls.filter((k) => k.startsWith('0.'))).toEqual(['0.0#1', '0.1#1', '0.0#2']);
    expect(lines).toEqual([
      '0 job:started 0/3',
      '0 start 0.0#1',
      '0 start 1.0#1',
      '1 fail 0.0#1 safety_blocked retry+5',
      '1 start 0.1#1',
      '2 fail 0.1#1 safety_blocked retry+5',
      '3 deliver 1.0#1 a10 1/3',
      '3 stage 1 completed 1/1',
      '6 start 0.0#2',
      '7 fail 0.0#2 safety_blocked',
      '7 stage 0 short 2 safety_blocked safety_blocked',
      '7 job partial [a10]',
      '7 |',
    ]);
  });

  it('a delivery between blocks starts the row again', () => {
    let blocks = 0;
    const { lines, calls } = simulate({
      quantities: [3],
      // block, block, image, block, block, block: the row is broken by the image, and the stage stops at the 3rd block after it.
      script: () => (++blocks === 3 ? { marble: '-i|' } : { marble: '-#', error: 'safety_blocked' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 1 }),
    });
    expect(calls).toHaveLength(6);
    expect(lines.filter((l) => l.includes('stage 0'))).toEqual([expect.stringMatching(/stage 0 short 2 safety_blocked safety_blocked$/)]);
  });

  it('maxSafetyBlocksPerStage 1: the first block stops the stage', () => {
    const { calls, lines } = simulate({
      quantities: [3],
      script: () => ({ marble: '-#', error: 'safety_blocked' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 1, maxSafetyBlocksPerStage: 1 }),
    });
    expect(calls).toEqual(['0.0#1']);
    expect(lines).toContain('1 stage 0 short 3 safety_blocked safety_blocked');
  });
});

