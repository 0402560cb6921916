import { finalize, of } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { untilCancelled } from '../../src/operators/until-cancelled.js';

const newScheduler = () => new TestScheduler((actual, expected) => expect(actual).toEqual(expected));

describe('untilCancelled: say what was cut off, act, then tear down', () => {
  it('mirrors the source until cancel$, then emits what onCancel emits and completes', () => {
    newScheduler().run(({ cold, hot, expectObservable, expectSubscriptions }) => {
      const source = cold('--a--b--c--|');
      const cancel = hot('------x');
      const result = source.pipe(untilCancelled({ cancel$: cancel, onCancel: (emit) => emit('y'), onClose: () => {} }));
      expectObservable(result).toBe('--a--b(y|)');
      expectSubscriptions(source.subscriptions).toBe('^-----!');
    });
  });

  it('completes with the source when cancel$ never emits', () => {
    newScheduler().run(({ cold, expectObservable }) => {
      const result = cold('-a|').pipe(untilCancelled({ cancel$: cold('-'), onCancel: (emit) => emit('y'), onClose: () => {} }));
      expectObservable(result).toBe('-a|');
    });
  });

  it('never subscribes the source when the cancel was signalled before', () => {
    newScheduler().run(({ cold, expectObservable, expectSubscriptions }) => {
      const source = cold('-a|');
      const result = source.pipe(untilCancelled({ cancel$: of(true), onCancel: (emit) => emit('y'), onClose: () => {} }));
      expectObservable(result).toBe('(y|)');
      expectSubscriptions(source.subscriptions).toBe([]);
    });
  });

  it('passes on an error of cancel$', () => {
    newScheduler().run(({ cold, expectObservable }) => {
      const result = cold('--a').pipe(untilCancelled({ cancel$: cold('-#'), onCancel: () => {}, onClose: () => {} }));
      expectObservable(result).toBe('-#');
    });
  });

  it('acts on cancel before the source is torn down, and runs onClose before the source teardown', () => {
    const log: string[] = [];
    newScheduler().run(({ cold, hot }) => {
      const source = cold('--a-----').pipe(finalize(() => log.push('source torn down')));
      const result = source.pipe(
        untilCancelled({ cancel$: hot('----x'), onCancel: () => log.push('cancelled'), onClose: () => log.push('closed') }),
      );
      result.subscribe();
    });
    expect(log).toEqual(['cancelled', 'closed', 'source torn down']);
  });

  it('runs onClose before the source teardown on a plain unsubscribe too', () => {
    const log: string[] = [];
    newScheduler().run(({ cold, expectObservable }) => {
      const source = cold('--a-----').pipe(finalize(() => log.push('source torn down')));
      const result = source.pipe(untilCancelled({ cancel$: cold('-'), onCancel: () => {}, onClose: () => log.push('closed') }));
      expectObservable(result, '^--!').toBe('--a');
    });
    expect(log).toEqual(['closed', 'source torn down']);
  });
});
