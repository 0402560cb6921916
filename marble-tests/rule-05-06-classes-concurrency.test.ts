import { timer, map } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ERROR_CLASSES, PipelineError, RETRYABLE, isRetryable, toPipelineError } from '../src/domain/error-class.js';
import { AdaptiveConcurrencyLimiter } from '../src/engine/adaptive-concurrency-limiter.js';
import { ConcurrencyLimiter } from '../src/engine/concurrency-limiter.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, simulate, stages, timeline, virtualOptions } from './support.js';

describe('rule 5: error classes decide; non-retryable stops the stage, auth stops the job', () => {
  it('the closed set: every class says whether it is retryable, in one place', () => {
    expect(Object.keys(RETRYABLE).sort()).toEqual([...ERROR_CLASSES].sort());
    expect(ERROR_CLASSES.filter((c) => !isRetryable(c)).sort()).toEqual(['auth', 'cancelled', 'invalid_request', 'prompt_blocked', 'quota_exhausted']);
    expect(new PipelineError('rate_limited', 'x', { retryAfterMs: 3 }).retryable).toBe(true);
    // an unclassified error from an adapter is treated as retryable network trouble, not a crash
    expect(toPipelineError(new TypeError('boom')).errorClass).toBe('network');
  });

  it('a prompt_blocked failure stops new requests of that stage; in-flight attempts finish; other stages go on', () => {
    const { lines, calls } = simulate({
      quantities: [6, 3],
      script: (r) =>
        r.stageIndex === 0 && r.slotIndex === 0 ? { marble: '-#', error: 'prompt_blocked' } : { marble: '---i|' },
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 2 }),
    });
    // stage 0: only the two in-flight slots were ever called; stage 1: all three.
    expect(calls.filter((k) => k.startsWith('0.'))).toEqual(['0.0#1', '0.1#1']);
    expect(calls.filter((k) => k.startsWith('1.'))).toEqual(['1.0#1', '1.1#1', '1.2#1']);
    expect(lines).toContain('1 fail 0.0#1 prompt_blocked');
    expect(lines).toContain('3 deliver 0.1#1 a01 1/9');
    expect(lines).toContain('3 stage 0 short 5 non_retryable prompt_blocked');
    expect(lines).toContain('6 stage 1 completed 3/3');
    expect(lines.at(-2)).toBe('6 job partial [a01,a10,a11,a12]');
  });

  it('an auth failure halts every stage: no new requests anywhere, in-flight ones finish', () => {
    const { lines, calls } = simulate({
      quantities: [2, 3],
      script: (r) =>
        r.stageIndex === 0 ? { marble: '-#', error: 'auth' } : { marble: '---i|' },
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 1 }),
    });
    expect(calls).toEqual(['0.0#1', '1.0#1']);
    expect(lines).toEqual([
      '0 job:started 0/5',
      '0 start 0.0#1',
      '0 start 1.0#1',
      '1 fail 0.0#1 auth',
      '1 stage 0 short 2 non_retryable auth',
      '3 deliver 1.0#1 a10 1/5',
      '3 stage 1 short 2 job_aborted auth',
      '3 job partial [a10]',
      '3 |',
    ]);
  });

  it('a server delay above maxRetryAfterMs is quota_exhausted: it halts every stage like auth, and no timer waits for it', () => {
    const { lines, calls } = simulate({
      quantities: [2, 3],
      script: (r) =>
        r.stageIndex === 0 ? { marble: '-#', error: 'rate_limited', retryAfterMs: 3_600_000 } : { marble: '---i|' },
      options: (scheduler) => ({ ...virtualOptions(scheduler), stageConcurrency: 1, backoff: { baseMs: 10, multiplier: 2, maxMs: 1000, maxRetryAfterMs: 100 } }),
    });
    expect(calls).toEqual(['0.0#1', '1.0#1']);
    expect(lines).toEqual([
      '0 job:started 0/5',
      '0 start 0.0#1',
      '0 start 1.0#1',
      '1 fail 0.0#1 quota_exhausted',
      '1 stage 0 short 2 non_retryable quota_exhausted',
      '3 deliver 1.0#1 a10 1/5',
      '3 stage 1 short 2 job_aborted quota_exhausted',
      '3 job partial [a10]',
      '3 |',
    ]);
  });

  it('the cap is inclusive: a delay of exactly maxRetryAfterMs is honoured (above the backoff maxMs), 1 ms more is quota_exhausted', () => {
    const run = (retryAfterMs: number) =>
      simulate({
        quantities: [1],
        script: (r) => (r.attempt === 1 ? { marble: '-#', error: 'rate_limited', retryAfterMs } : { marble: '-i|' }),
        options: (scheduler) => ({ ...virtualOptions(scheduler), backoff: { baseMs: 10, multiplier: 2, maxMs: 20, maxRetryAfterMs: 100 } }),
      });
    expect(run(101).lines).toEqual(['0 job:started 0/1', '0 start 0.0#1', '1 fail 0.0#1 quota_exhausted', '1 stage 0 short 1 non_retryable quota_exhausted', '1 job failed []', '1 |']);
    const { lines, calls } = run(100);
    expect(calls).toEqual(['0.0#1', '0.0#2']);
    expect(lines).toEqual([
      '0 job:started 0/1',
      '0 start 0.0#1',
      '1 fail 0.0#1 rate_limited retry+100',
      '101 start 0.0#2',
      '102 deliver 0.0#2 a00 1/1',
      '102 stage 0 completed 1/1',
      '102 job completed [a00]',
      '102 |',
    ]);
  });
});

describe('rule 6: a per-stage limit and one adaptive global limit', () => {
  it('never runs more than stageConcurrency attempts of one stage', () => {
    const scheduler = newScheduler();
    scheduler.run((helpers) => {
      const { ports, subscriptions } = scriptedPorts(helpers, () => ({ marble: '--i|' }));
      timeline(scheduler, runEngine({ jobId: 'j', stages: stages(4) }, ports, { ...virtualOptions(scheduler), stageConcurrency: 2 }));
      helpers.flush();
      helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('0.2#1')).toBe('--^-!');
      helpers.expectSubscriptions(subscriptions('0.3#1')).toBe('--^-!');
    });
  });

  it('shares one global limit between stages', () => {
    const scheduler = newScheduler();
    scheduler.run((helpers) => {
      const { ports, subscriptions } = scriptedPorts(helpers, () => ({ marble: '--i|' }));
      timeline(scheduler, runEngine({ jobId: 'j', stages: stages(2, 2) }, ports, { ...virtualOptions(scheduler), stageConcurrency: 2, globalConcurrency: 3 }));
      helpers.flush();
      helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('1.0#1')).toBe('^-!');
      helpers.expectSubscriptions(subscriptions('1.1#1')).toBe('--^-!');
    });
  });

  it('holds the global (provider) permit for the provider call only, not during the delivery', () => {
    const { lines } = simulate({
      quantities: [2],
      script: () => ({ marble: '-i|' }),
      deliver: (r) => newDeliveryAfter(3, `a0${r.slotIndex}`),
      options: (scheduler) => ({ ...virtualOptions(scheduler), globalConcurrency: 1 }),
      inside: (helpers, subscriptions) => {
        // slot 1's call starts when slot 0's call ends (1), not when its delivery ends (4)
        helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^!');
        helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('-^!');
      },
    });
    expect(lines).toContain('4 deliver 0.0#1 a00 1/2');
    expect(lines).toContain('5 deliver 0.1#1 a01 2/2');
  });

  it('a rate_limited outcome halves the global limit; successes grow it back one step per window', () => {
    const scheduler = newScheduler();
    const limiter = new AdaptiveConcurrencyLimiter({ max: 4 });
    const limits: string[] = [];
    scheduler.run((helpers) => {
      const { ports, subscriptions } = scriptedPorts(helpers, (r) =>
        r.slotIndex === 0 && r.attempt === 1 ? { marble: '-#', error: 'rate_limited', retryAfterMs: 10 } : { marble: '---i|' },
      );
      timeline(scheduler, runEngine({ jobId: 'j', stages: stages(8) }, ports, { ...virtualOptions(scheduler), globalLimiter: limiter }));
      for (const frame of [2, 4]) helpers.cold(`${frame}ms a`).subscribe(() => limits.push(`${frame}:${limiter.limit}`));
      helpers.flush();
      // 4 start at 0; the 429 at 1 cuts the limit to 2, so nothing new starts while 3 are still in flight.
      for (const slot of [1, 2, 3]) helpers.expectSubscriptions(subscriptions(`0.${slot}#1`)).toBe('^--!');
      // at 3 the three successes grow the limit 2 -> 3 (one window of 2): three start, slot 7 waits for the next window.
      for (const slot of [4, 5, 6]) helpers.expectSubscriptions(subscriptions(`0.${slot}#1`)).toBe('---^--!');
      helpers.expectSubscriptions(subscriptions('0.7#1')).toBe('------^--!');
    });
    expect(limits).toEqual(['2:2', '4:3']);
  });

  it('halves once per burst: 429s from attempts started under an older limit do not cut it again', () => {
    const limiter = new AdaptiveConcurrencyLimiter({ max: 8 });
    const permit = { epoch: 0 };
    limiter.onRateLimited(permit);
    limiter.onRateLimited(permit);
    expect(limiter.limit).toBe(4);
    limiter.onRateLimited({ epoch: 1 });
    expect(limiter.limit).toBe(2);
    limiter.onRateLimited({ epoch: 2 });
    limiter.onRateLimited({ epoch: 3 });
    expect(limiter.limit).toBe(1); // never below min
    for (let i = 0; i < 1 + 2 + 3 + 4 + 5 + 6 + 7; i++) limiter.onSuccess();
    expect(limiter.limit).toBe(8); // and never above max
  });

  it('rejects a limit that is not a positive integer', () => {
    expect(() => new ConcurrencyLimiter(0)).toThrow(RangeError);
    expect(() => new ConcurrencyLimiter(1.5)).toThrow(RangeError);
  });
});

/** A delivery that commits after `frames` virtual ms. */
function newDeliveryAfter(frames: number, attachId: string) {
  return timer(frames).pipe(map(() => ({ attachId, duplicate: false })));
}
