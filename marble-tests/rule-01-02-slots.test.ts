import { of } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { freshStageState } from '../src/domain/resume-state.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, simulate, stages, timeline, virtualOptions } from './support.js';

describe('rule 1: a stage requests exactly its unfilled slots', () => {
  it('requests all q slots at once on a fresh stage', () => {
    const { lines, calls } = simulate({
      quantities: [3],
      script: () => ({ marble: '--i|' }),
      inside: (helpers, subscriptions) => {
        for (const slot of [0, 1, 2]) helpers.expectSubscriptions(subscriptions(`0.${slot}#1`)).toBe('^-!');
      },
    });
    expect(calls).toEqual(['0.0#1', '0.1#1', '0.2#1']);
    expect(lines).toEqual([
      '0 job:started 0/3',
      '0 start 0.0#1',
      '0 start 0.1#1',
      '0 start 0.2#1',
      '2 deliver 0.0#1 a00 1/3',
      '2 deliver 0.1#1 a01 2/3',
      '2 deliver 0.2#1 a02 3/3',
      '2 stage 0 completed 3/3',
      '2 job completed [a00,a01,a02]',
      '2 |',
    ]);
  });

  it('on resume requests only the missing slots, continuing the attempt numbers', () => {
    const scheduler = newScheduler();
    let calls: string[] = [];
    let lines: string[] = [];
    scheduler.run((helpers) => {
      const { ports, calls: c } = scriptedPorts(helpers, () => ({ marble: '-i|' }));
      calls = c;
      const state = [
        { attachId: 'old0', attemptsUsed: 1 },
        { attachId: null, attemptsUsed: 2 },
        { attachId: null, attemptsUsed: 0 },
        { attachId: 'old3', attemptsUsed: 3 },
      ];
      lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(4), state: [state] }, ports, virtualOptions(scheduler)));
    });
    expect(calls).toEqual(['0.1#3', '0.2#1']);
    expect(lines).toEqual([
      '0 job:started 2/4',
      '0 start 0.1#3',
      '0 start 0.2#1',
      '1 deliver 0.1#3 a01 3/4',
      '1 deliver 0.2#1 a02 4/4',
      '1 stage 0 completed 4/4',
      '1 job completed [old0,a01,a02,old3]',
      '1 |',
    ]);
  });

  it('a fully delivered job makes no calls and still finishes once', () => {
    const { lines, calls } = simulate({
      quantities: [1],
      script: () => ({ marble: '-i|' }),
      state: [[{ attachId: 'x', attemptsUsed: 1 }]],
    });
    expect(calls).toEqual([]);
    expect(lines).toEqual(['0 job:started 1/1', '0 stage 0 completed 1/1', '0 job completed [x]', '0 |']);
  });

  it('refuses a resume state whose slot count does not match the quantity', () => {
    const scheduler = newScheduler();
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(helpers, () => ({ marble: '-i|' }));
      const events$ = runEngine({ jobId: 'j', stages: stages(2), state: [freshStageState(3)] }, ports, virtualOptions(scheduler));
      helpers.expectObservable(events$).toBe('#', undefined, new RangeError('resume state of stage 0 has 3 slots, the stage has quantity 2'));
    });
  });
});

describe('rule 2: a slot is filled at most once, never more than q deliveries', () => {
  it('takes one image per attempt even when the generator emits more', () => {
    const { lines } = simulate({
      quantities: [1],
      script: () => ({ marble: '-iii|' }),
      inside: (helpers, subscriptions) => {
        // Unsubscribed right after the first image: the generator is not left running.
        helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^!');
      },
    });
    expect(lines.filter((l) => l.includes('deliver'))).toEqual(['1 deliver 0.0#1 a00 1/1']);
  });

  it('counts a duplicate delivery (slot already filled in the store) once, with the stored attach id', () => {
    const scheduler = newScheduler();
    let lines: string[] = [];
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(
        helpers,
        () => ({ marble: '-i|' }),
        (r) => of({ attachId: r.slotIndex === 0 ? 'stored' : `a0${r.slotIndex}`, duplicate: r.slotIndex === 0 }),
      );
      lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(2) }, ports, virtualOptions(scheduler)));
    });
    expect(lines.filter((l) => l.includes('deliver') || l.includes('job '))).toEqual([
      '1 deliver 0.0#1 stored 1/2',
      '1 deliver 0.1#1 a01 2/2',
      '1 job completed [stored,a01]',
    ]);
  });

  it('completes a stage when all its slots are filled, not before', () => {
    const { lines } = simulate({
      quantities: [2],
      script: (r) => ({ marble: r.slotIndex === 1 ? '-----i|' : '-i|' }),
    });
    expect(lines.filter((l) => l.includes('stage'))).toEqual(['5 stage 0 completed 2/2']);
  });
});
