import { of, type Observable } from 'rxjs';
import type { ColdObservable } from 'rxjs/internal/testing/ColdObservable';
import { describe, it } from 'vitest';
import { exhaustMapWithTrailing } from '../src/operators/exhaust-map-with-trailing.js';
import { newScheduler } from './support.js';

/** `project` answering each value with its own cold (so each one's subscriptions can be asserted). */
function byValue(inners: Readonly<Record<string, ColdObservable<string>>>) {
  return (value: string): Observable<string> => {
    const inner = inners[value];
    if (!inner) throw new Error(`no inner for ${value}`);
    return inner;
  };
}

describe('exhaustMapWithTrailing: values during an inner coalesce into one run after it', () => {
  it('runs the first value at once; of b and c (during a) runs only c, once a completes; d (later) at once', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = hot('  -a-b-c--------d---|');
      const a = cold('       ----A|');
      const b = cold('         ----B|');
      const c = cold('            ----C|');
      const d = cold('                ----D|');
      const expected = '    -----A----C-------D|';
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a, b, c, d })))).toBe(expected);
      expectSubscriptions(a.subscriptions).toBe('-^----!');
      expectSubscriptions(b.subscriptions).toBe([]);
      expectSubscriptions(c.subscriptions).toBe('------^----!');
      expectSubscriptions(d.subscriptions).toBe('--------------^----!');
      // The source ends at its completion; the output waits for d.
      expectSubscriptions(source.subscriptions).toBe('^-----------------!');
    });
  });

  it('a value during the trailing run is owed again: every signal is followed by a run that starts after it', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = hot('  -a-b----c-----|');
      const a = cold('       ---A|');
      const b = cold('          ---B|');
      const c = cold('               ---C|');
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a, b, c })))).toBe('----A---B---C-|');
      expectSubscriptions(a.subscriptions).toBe('-^---!');
      expectSubscriptions(b.subscriptions).toBe('-----^---!');
      expectSubscriptions(c.subscriptions).toBe('---------^---!');
    });
  });

  it('synchronous inners: one run per value, nothing owed', () => {
    newScheduler().run(({ hot, expectObservable }) => {
      const source = hot('-a-b-c|');
      expectObservable(source.pipe(exhaustMapWithTrailing((v: string) => of(v.toUpperCase())))).toBe('-A-B-C|');
    });
  });

  it('empty: completes with the source; never-ending without values: never emits', () => {
    newScheduler().run(({ cold, expectObservable }) => {
      expectObservable(cold('|').pipe(exhaustMapWithTrailing((v: string) => of(v)))).toBe('|');
      expectObservable(cold('-').pipe(exhaustMapWithTrailing((v: string) => of(v)))).toBe('-');
    });
  });

  it('an inner error is passed on at once and unsubscribes the source and what was owed', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = hot('  -a-b------');
      const a = cold('       ---#', undefined, new Error('read failed'));
      const b = cold('         --B|');
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a, b })))).toBe('----#', undefined, new Error('read failed'));
      expectSubscriptions(source.subscriptions).toBe('^---!');
      expectSubscriptions(b.subscriptions).toBe([]);
    });
  });

  it('a source error is passed on at once, even while an inner runs', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = hot('  -a--#');
      const a = cold('       -----A|');
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a })))).toBe('----#');
      expectSubscriptions(a.subscriptions).toBe('-^--!');
    });
  });

  it('a project that throws for the owed value errors the stream when that value is due', () => {
    newScheduler().run(({ cold, hot, expectObservable }) => {
      const source = hot('  -a-b------');
      const a = cold('       ---A|');
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a })))).toBe('----A#', undefined, new Error('no inner for b'));
    });
  });

  it('unsubscribing early tears the running inner down and runs nothing owed', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = hot('  -a-b-------');
      const a = cold('       -----A|');
      const b = cold('         --B|');
      expectObservable(source.pipe(exhaustMapWithTrailing(byValue({ a, b }))), '----!').toBe('----');
      expectSubscriptions(a.subscriptions).toBe('-^--!');
      expectSubscriptions(b.subscriptions).toBe([]);
      expectSubscriptions(source.subscriptions).toBe('^---!');
    });
  });
});
