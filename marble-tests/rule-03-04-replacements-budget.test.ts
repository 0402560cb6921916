import { describe, expect, it } from 'vitest';
import { fullJitterBackoff } from '../src/engine/full-jitter-backoff.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, simulate, stages, timeline, virtualOptions } from './support.js';

describe('rule 3: a retryable failure becomes a replacement for the same slot after its backoff', () => {
  it('re-requests the failed slot at failure + full-jitter backoff, while other slots go on', () => {
    const scheduler = newScheduler();
    let lines: string[] = [];
    scheduler.run((helpers) => {
      // slot 0: attempt 1 fails at 2 (overloaded), attempt 2 succeeds; slot 1 is slow and never waits for slot 0.
      const { ports, subscriptions } = scriptedPorts(helpers, (r) =>
        r.slotIndex === 0 ? (r.attempt === 1 ? { marble: '--#', error: 'overloaded' } : { marble: '-i|' }) : { marble: '--------i|' },
      );
      lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(2) }, ports, virtualOptions(scheduler)));
      helpers.flush();
      // backoff after attempt 1: floor(0.5 * 10) = 5 -> the replacement is subscribed at 2 + 5 = 7.
      helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('0.0#2')).toBe('-------^!');
      helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('^-------!');
    });
    expect(lines).toEqual([
      '0 job:started 0/2',
      '0 start 0.0#1',
      '0 start 0.1#1',
      '2 fail 0.0#1 overloaded retry+5',
      '7 start 0.0#2',
      '8 deliver 0.1#1 a01 1/2',
      '8 deliver 0.0#2 a00 2/2',
      '8 stage 0 completed 2/2',
      '8 job completed [a00,a01]',
      '8 |',
    ]);
  });

  it("waits at least the server's retry delay when it is longer than the backoff", () => {
    const { lines } = simulate({
      quantities: [1],
      script: (r) =>
        r.attempt === 1 ? { marble: '-#', error: 'rate_limited', retryAfterMs: 20 } : { marble: '-i|' },
      inside: (helpers, subscriptions) => {
        helpers.expectSubscriptions(subscriptions('0.0#2')).toBe('---------------------^!');
      },
    });
    expect(lines).toContain('1 fail 0.0#1 rate_limited retry+20');
    expect(lines).toContain('22 deliver 0.0#2 a00 1/1');
  });

  it('grows the backoff exponentially per attempt and caps it', () => {
    // random 0.5: 5, 10, 20, 40 ... capped at maxMs 25 -> 12 (half of the cap).
    const random = () => 0.5;
    const config = { baseMs: 10, multiplier: 2, maxMs: 25 };
    expect([1, 2, 3, 4, 5].map((n) => fullJitterBackoff(n, undefined, random, config))).toEqual([5, 10, 12, 12, 12]);
    // full jitter: the delay is anywhere in [0, ceiling).
    expect(fullJitterBackoff(3, undefined, () => 0, config)).toBe(0);
    expect(fullJitterBackoff(3, undefined, () => 0.999, config)).toBe(24);
    // the server's delay wins even above the cap.
    expect(fullJitterBackoff(1, 5000, random, config)).toBe(5000);
  });

  it('replacement timings follow the backoff in virtual time (5, then 10)', () => {
    const { lines } = simulate({
      quantities: [1],
      script: (r) => (r.attempt < 3 ? { marble: '-#', error: 'timeout' } : { marble: '-i|' }),
    });
    expect(lines.filter((l) => /^\d+ (start|fail) /.test(l))).toEqual([
      '0 start 0.0#1',
      '1 fail 0.0#1 timeout retry+5',
      '6 start 0.0#2',
      '7 fail 0.0#2 timeout retry+10',
      '17 start 0.0#3',
    ]);
  });
});

describe('rule 4: budgets end a stage short with budget_exhausted and the last error class', () => {
  it('stops a slot after maxAttemptsPerSlot attempts', () => {
    const { lines, calls } = simulate({
      quantities: [2],
      script: (r) => (r.slotIndex === 1 ? { marble: '-#', error: 'network' } : { marble: '-i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxAttemptsPerSlot: 3 }),
    });
    expect(calls.filter((k) => k.startsWith('0.1'))).toEqual(['0.1#1', '0.1#2', '0.1#3']);
    expect(lines).toContain('18 fail 0.1#3 network');
    expect(lines.slice(-3)).toEqual(['18 stage 0 short 1 budget_exhausted network', '18 job partial [a00]', '18 |']);
  });

  it('stops replacements once the stage has spent maxReplacementsPerStage', () => {
    const { lines, calls } = simulate({
      quantities: [3],
      script: () => ({ marble: '-#', error: 'overloaded' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxReplacementsPerStage: 2 }),
    });
    // 3 first attempts + exactly 2 replacements.
    expect(calls).toEqual(['0.0#1', '0.1#1', '0.2#1', '0.0#2', '0.1#2']);
    expect(lines.filter((l) => /^\d+ fail /.test(l))).toEqual([
      '1 fail 0.0#1 overloaded retry+5',
      '1 fail 0.1#1 overloaded retry+5',
      '1 fail 0.2#1 overloaded',
      '7 fail 0.0#2 overloaded',
      '7 fail 0.1#2 overloaded',
    ]);
    expect(lines.at(-3)).toBe('7 stage 0 short 3 budget_exhausted overloaded');
    expect(lines.at(-2)).toBe('7 job failed []');
  });

  it('does not reset the budget on resume: recorded attempts count', () => {
    const { lines, calls } = simulate({
      quantities: [1],
      script: () => ({ marble: '-#', error: 'overloaded' }),
      state: [[{ attachId: null, attemptsUsed: 2 }]],
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxAttemptsPerSlot: 3 }),
    });
    expect(calls).toEqual(['0.0#3']);
    expect(lines).toContain('1 stage 0 short 1 budget_exhausted overloaded');
  });

  it('charges no budget for attempts abandoned by a dead run: numbers go on, the budget is whole', () => {
    // Two runs died with attempts 1 and 2 of slot 0 in flight; attempt 3 of slot 1 failed at the provider.
    const { lines, calls } = simulate({
      quantities: [2],
      script: (r) => (r.attempt < 5 ? { marble: '-#', error: 'overloaded' } : { marble: '-i|' }),
      state: [[{ attachId: null, attemptsUsed: 2, attemptsCharged: 0 }, { attachId: null, attemptsUsed: 3, attemptsCharged: 1 }]],
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxAttemptsPerSlot: 3, maxReplacementsPerStage: 4 }),
    });
    // Slot 0 gets its full 3 attempts (3, 4, 5) and slot 1 its remaining 2 (4, 5): 4 replacements in all.
    expect(calls.filter((c) => c.startsWith('0.0'))).toEqual(['0.0#3', '0.0#4', '0.0#5']);
    expect(calls.filter((c) => c.startsWith('0.1'))).toEqual(['0.1#4', '0.1#5']);
    expect(lines.at(-3)).toMatch(/ stage 0 completed 2\/2$/);
  });

  it('a replacement after a restart still charges the stage budget (the stage budget is not refunded)', () => {
    const { calls, lines } = simulate({
      quantities: [2],
      script: () => ({ marble: '-#', error: 'overloaded' }),
      // Before the restart the stage used 2 replacements (slot 0 is filled after 3 attempts).
      state: [[{ attachId: 'old0', attemptsUsed: 3, attemptsCharged: 3 }, { attachId: null, attemptsUsed: 1, attemptsCharged: 1 }]],
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxAttemptsPerSlot: 5, maxReplacementsPerStage: 3 }),
    });
    expect(calls).toEqual(['0.1#2']);
    expect(lines).toContain('1 stage 0 short 1 budget_exhausted overloaded');
  });

  it('makes no call for a slot that spent its budget before a restart', () => {
    const { lines, calls } = simulate({
      quantities: [2],
      script: () => ({ marble: '-i|' }),
      state: [[{ attachId: null, attemptsUsed: 3 }, { attachId: null, attemptsUsed: 0 }]],
      options: (scheduler) => ({ ...virtualOptions(scheduler), maxAttemptsPerSlot: 3 }),
    });
    expect(calls).toEqual(['0.1#1']);
    expect(lines).toContain('1 stage 0 short 1 budget_exhausted null');
  });
});
