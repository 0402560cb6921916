import { defer, of, throwError } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { retryWhileTransient } from '../src/operators/retry-while-transient.js';
import { newScheduler } from './support.js';

class Lost extends Error {}
const isTransient = (error: unknown) => error instanceof Lost;

describe('retryWhileTransient: an unreachable database is waited out, with growing pauses', () => {
  it('resubscribes after each transient error, pausing random x min(max, base x 2^(n-1)), then passes the value', () => {
    const scheduler = newScheduler();
    scheduler.run(({ cold, expectObservable, expectSubscriptions }) => {
      // Three losses, then an answer. random() = 0.5: pauses of 50, 100, 200 frames (base 100).
      const source = cold('--#');
      let tries = 0;
      const work = defer(() => (++tries <= 3 ? source : cold('--(a|)')));
      const pauses: number[] = [];
      const result = work.pipe(retryWhileTransient({ isTransient: () => true, baseMs: 100, maxMs: 1_000, random: () => 0.5, onRetry: (_e, _n, ms) => pauses.push(ms) }));
      // tries at 0, 2+50, 54+100, 156+200 = 356; the answer 2 frames later.
      expectObservable(result).toBe('358ms (a|)');
      expectSubscriptions(source.subscriptions).toBe(['^-!', '52ms ^-!', '154ms ^-!']);
      scheduler.flush();
      expect(pauses).toEqual([50, 100, 200]);
    });
  });

  it('caps the pause at maxMs however long the loss lasts', () => {
    const pauses: number[] = [];
    const scheduler = newScheduler();
    scheduler.run(({ expectObservable }) => {
      let tries = 0;
      const work = defer(() => (++tries <= 8 ? throwError(() => new Lost()) : of('a')));
      const result = work.pipe(retryWhileTransient({ isTransient, baseMs: 100, maxMs: 400, random: () => 0.999, onRetry: (_e, _n, ms) => pauses.push(ms) }));
      // floor(0.999 x 100) = 99, 199, then 399 six times: the answer at their sum, 2692.
      expectObservable(result).toBe('2692ms (a|)');
    });
    expect(pauses).toEqual([99, 199, 399, 399, 399, 399, 399, 399]);
  });

  it('passes any other error at once, without a pause', () => {
    const scheduler = newScheduler();
    scheduler.run(({ cold, expectObservable }) => {
      const wrong = new Error('syntax error');
      const result = cold('--#', undefined, wrong).pipe(retryWhileTransient({ isTransient }));
      expectObservable(result).toBe('--#', undefined, wrong);
    });
  });

  it('unsubscribing during a pause stops the waiting: no more tries', () => {
    const scheduler = newScheduler();
    let tries = 0;
    scheduler.run(({ expectObservable }) => {
      const work = defer(() => (++tries, throwError(() => new Lost())));
      expectObservable(work.pipe(retryWhileTransient({ isTransient, baseMs: 100, random: () => 0.5 })), '^ 120ms !').toBe('');
    });
    // Tries at 0, 50, 150 (pauses 50, 100); the unsubscribe at 120 lands in the second pause.
    expect(tries).toBe(2);
  });
});
