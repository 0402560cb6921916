import { describe, expect, it } from 'vitest';
import { runEngine } from '../src/streams/engine.js';
import { compact, newScheduler, scriptedPorts, simulate, stages, virtualOptions } from './support.js';
import { map } from 'rxjs';

describe('rule 7: stages run concurrently, the merged list is in stage order then slot order', () => {
  it('starts stage 1 at frame 0 although stage 0 is slower, and still merges stage 0 first', () => {
    const { lines } = simulate({
      quantities: [2, 2],
      script: (r) =>
        r.stageIndex === 0 ? { marble: r.slotIndex === 0 ? '--------i|' : '------i|' } : { marble: '-i|' },
      inside: (helpers, subscriptions) => {
        // concurrency: both stages' first requests at frame 0
        helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^-------!');
        helpers.expectSubscriptions(subscriptions('1.0#1')).toBe('^!');
        helpers.expectSubscriptions(subscriptions('1.1#1')).toBe('^!');
      },
    });
    expect(lines).toEqual([
      '0 job:started 0/4',
      '0 start 0.0#1',
      '0 start 0.1#1',
      '0 start 1.0#1',
      '0 start 1.1#1',
      '1 deliver 1.0#1 a10 1/4',
      '1 deliver 1.1#1 a11 2/4',
      '1 stage 1 completed 2/2',
      '6 deliver 0.1#1 a01 3/4',
      '8 deliver 0.0#1 a00 4/4',
      '8 stage 0 completed 2/2',
      // order: stage 0 (slot 0, slot 1) then stage 1, although delivery order was a10 a11 a01 a00
      '8 job completed [a00,a01,a10,a11]',
      '8 |',
    ]);
  });

  it('emits the whole event stream as marbles: started, deliveries, stage ends, finished last', () => {
    const scheduler = newScheduler();
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(helpers, (r) => ({ marble: r.stageIndex === 0 ? '----------i|' : '-----i|' }));
      const events$ = runEngine({ jobId: 'j', stages: stages(1, 1) }, ports, virtualOptions(scheduler)).pipe(map(compact));
      // frames: (abc) at 0, (de) at 5, (fgh|) at 10
      helpers.expectObservable(events$).toBe('(abc)(de)-(fgh|)', {
        a: 'job:started 0/2',
        b: 'start 0.0#1',
        c: 'start 1.0#1',
        d: 'deliver 1.0#1 a10 1/2',
        e: 'stage 1 completed 1/1',
        f: 'deliver 0.0#1 a00 2/2',
        g: 'stage 0 completed 1/1',
        h: 'job completed [a00,a10]',
      });
    });
  });
});

describe('rule 8: a per-attempt timeout turns a hung call into a timeout failure and unsubscribes it', () => {
  it('fails a hung generate after attemptTimeoutMs, aborts it, and replaces it', () => {
    const { lines } = simulate({
      quantities: [1],
      script: (r) => (r.attempt === 1 ? { marble: '-' } : { marble: '-i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), attemptTimeoutMs: 5 }),
      inside: (helpers, subscriptions) => {
        helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^----!');
        helpers.expectSubscriptions(subscriptions('0.0#2')).toBe('----------^!');
      },
    });
    expect(lines).toContain('5 fail 0.0#1 timeout retry+5');
    expect(lines).toContain('11 deliver 0.0#2 a00 1/1');
  });
});

describe('rule 9: cancellation stops new requests, aborts in-flight ones, ends cancelled', () => {
  it('a cancel signal aborts in-flight attempts and pending replacements', () => {
    const { lines, calls } = simulate({
      quantities: [3],
      script: (r) => (r.slotIndex === 0 ? { marble: '-#', error: 'overloaded' } : { marble: '--------i|' }),
      options: (scheduler, helpers) => ({ ...virtualOptions(scheduler), stageConcurrency: 2, cancel$: helpers.hot('----x') }),
      inside: (helpers, subscriptions) => {
        helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('^---!');
        helpers.expectSubscriptions(subscriptions('0.2#1')).toBe('-^--!');
      },
    });
    // slot 2 took slot 0's permit at 1; slot 0's replacement (due at 6) is never requested.
    expect(calls).toEqual(['0.0#1', '0.1#1', '0.2#1']);
    expect(lines).toEqual([
      '0 job:started 0/3',
      '0 start 0.0#1',
      '0 start 0.1#1',
      '1 fail 0.0#1 overloaded retry+5',
      '1 start 0.2#1',
      '4 fail 0.1#1 cancelled',
      '4 fail 0.2#1 cancelled',
      '4 stage 0 short 3 cancelled cancelled',
      '4 job cancelled []',
      '4 |',
    ]);
  });

  it('unsubscribing aborts in-flight attempts and makes no further calls', () => {
    const scheduler = newScheduler();
    let calls: string[] = [];
    scheduler.run((helpers) => {
      const { ports, subscriptions, calls: c } = scriptedPorts(helpers, () => ({ marble: '-----i|' }));
      calls = c;
      const events$ = runEngine({ jobId: 'j', stages: stages(4) }, ports, { ...virtualOptions(scheduler), stageConcurrency: 2 }).pipe(map(compact));
      helpers.expectObservable(events$, '^--!').toBe('(abc)', { a: 'job:started 0/4', b: 'start 0.0#1', c: 'start 0.1#1' });
      helpers.flush();
      helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^--!');
      helpers.expectSubscriptions(subscriptions('0.1#1')).toBe('^--!');
    });
    expect(calls).toEqual(['0.0#1', '0.1#1']);
  });
});
