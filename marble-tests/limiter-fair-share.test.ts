import { of, throwError, type Observable, type Subscription } from 'rxjs';
import type { RunHelpers, TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { AdaptiveConcurrencyLimiter } from '../src/engine/adaptive-concurrency-limiter.js';
import { ConcurrencyLimiter } from '../src/engine/concurrency-limiter.js';
import type { Share } from '../src/engine/fair-queue.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, stages, timeline, virtualOptions } from './support.js';

const A: Share = { userId: 'A', jobId: 'a', priority: 0 };
const B: Share = { userId: 'B', jobId: 'b', priority: 0 };

/**
 * A limiter under test in virtual time: `queue` asks for a permit at a frame and holds
 * it for the cold `marble`; `starts()` groups the names by the frame their work started.
 */
function bench(scheduler: TestScheduler, helpers: RunHelpers, limiter: ConcurrencyLimiter) {
  const started: [frame: number, name: string][] = [];
  const colds = new Map<string, ReturnType<RunHelpers['cold']>>();
  const queue = (frame: number, name: string, options: { share?: Share; marble?: string; leaveAt?: number; work?: () => Observable<unknown> } = {}) => {
    const cold = helpers.cold(options.marble ?? '--|');
    colds.set(name, cold);
    let subscription: Subscription | undefined;
    scheduler.schedule(() => {
      const work = () => {
        started.push([scheduler.now(), name]);
        return options.work ? options.work() : cold;
      };
      subscription = limiter.run(work, options.share).subscribe({ error: () => undefined });
    }, frame);
    if (options.leaveAt !== undefined) scheduler.schedule(() => subscription?.unsubscribe(), options.leaveAt);
  };
  const at = (frame: number, action: () => void) => scheduler.schedule(action, frame);
  const starts = () => {
    const byFrame: Record<number, string> = {};
    for (const [frame, name] of started) byFrame[frame] = byFrame[frame] === undefined ? name : `${byFrame[frame]} ${name}`;
    return byFrame;
  };
  return { queue, at, starts, subscriptions: (name: string) => colds.get(name)!.subscriptions };
}

/** Runs `body` in virtual time and returns the starts by frame. */
function run(limiter: (scheduler: TestScheduler) => ConcurrencyLimiter, body: (b: ReturnType<typeof bench>, helpers: RunHelpers, l: ConcurrencyLimiter) => void) {
  const scheduler = newScheduler();
  let starts: Record<number, string> = {};
  scheduler.run((helpers) => {
    const l = limiter(scheduler);
    const b = bench(scheduler, helpers, l);
    body(b, helpers, l);
    helpers.flush();
    starts = b.starts();
  });
  return starts;
}

describe('ConcurrencyLimiter: fair share of permits', () => {
  it('a user who queues later gets the next free permits, taking turns, not after the first user’s queue', () => {
    const starts = run(
      () => new ConcurrencyLimiter(2),
      ({ queue }) => {
        for (let i = 1; i <= 10; i++) queue(0, `A${i}`, { share: A });
        queue(1, 'B1', { share: B });
        queue(1, 'B2', { share: B });
      },
    );
    // first come first served would start B1 B2 at 10
    expect(starts).toEqual({ 0: 'A1 A2', 2: 'B1 A3', 4: 'B2 A4', 6: 'A5 A6', 8: 'A7 A8', 10: 'A9 A10' });
  });

  it('a user’s jobs take turns within the user’s turn', () => {
    const a2: Share = { userId: 'A', jobId: 'a2', priority: 0 };
    const starts = run(
      () => new ConcurrencyLimiter(1),
      ({ queue }) => {
        for (const name of ['x1', 'x2', 'x3']) queue(0, name, { share: A });
        queue(0, 'y1', { share: a2 });
        queue(0, 'b1', { share: B });
      },
    );
    expect(starts).toEqual({ 0: 'x1', 2: 'b1', 4: 'y1', 6: 'x2', 8: 'x3' });
  });

  it('priority 1 goes before priority 0, even when it queued later', () => {
    const urgent: Share = { userId: 'B', jobId: 'h', priority: 1 };
    const starts = run(
      () => new ConcurrencyLimiter(1),
      ({ queue }) => {
        queue(0, 'a1', { share: A });
        queue(0, 'a2', { share: A });
        queue(0, 'a3', { share: A });
        queue(1, 'h1', { share: urgent });
      },
    );
    expect(starts).toEqual({ 0: 'a1', 2: 'h1', 4: 'a2', 6: 'a3' });
  });

  it('callers without a share stay first come first served', () => {
    const starts = run(
      () => new ConcurrencyLimiter(1),
      ({ queue }) => {
        for (const [frame, name] of [[0, 'p'], [0, 'q'], [1, 'r'], [1, 's'], [3, 't']] as const) queue(frame, name);
      },
    );
    expect(starts).toEqual({ 0: 'p', 2: 'q', 4: 'r', 6: 's', 8: 't' });
  });

  it('a subscriber that leaves while queued leaves the queue: its work never starts, the next one takes the permit', () => {
    run(
      () => new ConcurrencyLimiter(1),
      ({ queue, at, subscriptions }, helpers, limiter) => {
        queue(0, 'a1', { share: A });
        queue(0, 'a2', { share: A, leaveAt: 1 });
        queue(0, 'b1', { share: B, leaveAt: 1 });
        queue(0, 'a3', { share: A });
        const waiting: number[] = [];
        at(0, () => waiting.push(limiter.waiting));
        at(1, () => waiting.push(limiter.waiting));
        helpers.flush();
        expect(waiting).toEqual([3, 1]);
        helpers.expectSubscriptions(subscriptions('a1')).toBe('^-!');
        helpers.expectSubscriptions(subscriptions('a2')).toBe([]);
        helpers.expectSubscriptions(subscriptions('b1')).toBe([]);
        helpers.expectSubscriptions(subscriptions('a3')).toBe('--^-!');
      },
    );
  });

  it('a permit goes back on error, on unsubscribe while running, and when the work throws', () => {
    const starts = run(
      () => new ConcurrencyLimiter(1),
      ({ queue, subscriptions }, helpers) => {
        queue(0, 'errors', { share: A, marble: '-#' });
        queue(0, 'leaves', { share: A, marble: '-----|', leaveAt: 3 });
        queue(0, 'throws', { share: A, work: () => { throw new Error('boom'); } });
        queue(0, 'sync', { share: A, work: () => of(1) });
        queue(0, 'last', { share: A });
        helpers.flush();
        helpers.expectSubscriptions(subscriptions('leaves')).toBe('-^-!');
      },
    );
    expect(starts).toEqual({ 0: 'errors', 1: 'leaves', 3: 'throws sync last' });
  });
});

describe('ConcurrencyLimiter: setLimit (public, for a fleet-wide controller)', () => {
  it('0 holds every waiter while the permits out finish; raising it starts them in turn', () => {
    const starts = run(
      () => new ConcurrencyLimiter(2),
      ({ queue, at }, _helpers, limiter) => {
        for (const name of ['a1', 'a2', 'a3']) queue(0, name, { share: A });
        queue(0, 'b1', { share: B });
        at(1, () => limiter.setLimit(0));
        at(5, () => limiter.setLimit(2));
      },
    );
    expect(starts).toEqual({ 0: 'a1 a2', 5: 'b1 a3' });
  });

  it('rejects a limit that is not a non-negative integer', () => {
    const limiter = new ConcurrencyLimiter(1);
    expect(() => limiter.setLimit(-1)).toThrow(RangeError);
    expect(() => limiter.setLimit(1.5)).toThrow(RangeError);
    expect(limiter.limit).toBe(1);
  });
});

describe('ConcurrencyLimiter: per-user cap', () => {
  it('a user at its cap waits while another user takes a free permit at once', () => {
    const starts = run(
      () => new ConcurrencyLimiter({ limit: 3, userCap: 2 }),
      ({ queue }) => {
        for (let i = 1; i <= 4; i++) queue(0, `A${i}`, { share: A });
        queue(1, 'B1', { share: B });
      },
    );
    // without the cap A3 would take the third permit at 0
    expect(starts).toEqual({ 0: 'A1 A2', 1: 'B1', 2: 'A3 A4' });
  });

  it('the cap counts users, not jobs; raising it starts the waiters at once, removing it too', () => {
    const otherJobOfA: Share = { userId: 'A', jobId: 'a2', priority: 0 };
    const starts = run(
      () => new ConcurrencyLimiter({ limit: 4, userCap: 1 }),
      ({ queue, at }, _helpers, limiter) => {
        queue(0, 'a1', { share: A, marble: '----------|' });
        queue(0, 'x1', { share: otherJobOfA, marble: '----------|' });
        queue(0, 'a2', { share: A, marble: '----------|' });
        queue(0, 'x2', { share: otherJobOfA, marble: '----------|' });
        at(2, () => limiter.setUserCap(2));
        at(4, () => limiter.setUserCap(undefined));
      },
    );
    expect(starts).toEqual({ 0: 'a1', 2: 'x1', 4: 'a2 x2' });
  });

  it('rejects a cap that is not a positive integer', () => {
    expect(() => new ConcurrencyLimiter({ limit: 2, userCap: 0 })).toThrow(RangeError);
    expect(() => new ConcurrencyLimiter(2).setUserCap(1.5)).toThrow(RangeError);
  });
});

describe('ConcurrencyLimiter: the start-rate gate (maxPerMinute) in virtual time', () => {
  const cases = [
    { perMinute: 60, starts: { 0: 'a1', 1000: 'a2', 2000: 'a3', 3000: 'a4' }, why: 'a burst of 1, then one start per second' },
    { perMinute: 120, starts: { 0: 'a1 a2', 500: 'a3', 1000: 'a4' }, why: 'a burst of 2, then one start per 500 ms' },
    { perMinute: 6, starts: { 0: 'a1', 10000: 'a2', 20000: 'a3', 30000: 'a4' }, why: 'below one a second: a burst of 1, one start per 10 s' },
  ];
  for (const c of cases) {
    it(`${c.perMinute}/min: ${c.why}, though permits are free`, () => {
      const starts = run(
        (scheduler) => new ConcurrencyLimiter({ limit: 10, maxPerMinute: c.perMinute, scheduler }),
        ({ queue }) => {
          for (let i = 1; i <= 4; i++) queue(0, `a${i}`, { share: A, marble: '-|' });
        },
      );
      expect(starts).toEqual(c.starts);
    });
  }

  it('the subscriptions show the spacing: each work is subscribed when its token is due', () => {
    run(
      (scheduler) => new ConcurrencyLimiter({ limit: 10, maxPerMinute: 60, scheduler }),
      ({ queue, subscriptions }, helpers) => {
        for (const name of ['a1', 'a2', 'a3']) queue(0, name, { share: A, marble: '-|' });
        helpers.flush();
        helpers.expectSubscriptions(subscriptions('a1')).toBe('^!');
        helpers.expectSubscriptions(subscriptions('a2')).toBe('1000ms ^!');
        helpers.expectSubscriptions(subscriptions('a3')).toBe('2000ms ^!');
      },
    );
  });

  it('an idle gate saves up one burst only', () => {
    const starts = run(
      (scheduler) => new ConcurrencyLimiter({ limit: 10, maxPerMinute: 60, scheduler }),
      ({ queue }) => {
        queue(0, 'a1', { share: A, marble: '-|' });
        for (const name of ['b1', 'b2', 'b3']) queue(5000, name, { share: B, marble: '-|' });
      },
    );
    expect(starts).toEqual({ 0: 'a1', 5000: 'b1', 6000: 'b2', 7000: 'b3' });
  });

  it('the gate and the fair share work together: tokens go to users in turn', () => {
    const starts = run(
      (scheduler) => new ConcurrencyLimiter({ limit: 10, maxPerMinute: 60, scheduler }),
      ({ queue }) => {
        for (const name of ['a1', 'a2', 'a3']) queue(0, name, { share: A, marble: '-|' });
        queue(1, 'b1', { share: B, marble: '-|' });
      },
    );
    expect(starts).toEqual({ 0: 'a1', 1000: 'b1', 2000: 'a2', 3000: 'a3' });
  });

  it('turning the gate off starts the waiters at once; turning it on starts with one burst', () => {
    const starts = run(
      (scheduler) => new ConcurrencyLimiter({ limit: 10, maxPerMinute: 60, scheduler }),
      ({ queue, at }, _helpers, limiter) => {
        for (const name of ['a1', 'a2', 'a3']) queue(0, name, { share: A, marble: '-|' });
        at(10, () => limiter.setMaxPerMinute(undefined));
        at(20, () => limiter.setMaxPerMinute(60));
        for (const name of ['b1', 'b2']) queue(20, name, { share: B, marble: '-|' });
      },
    );
    expect(starts).toEqual({ 0: 'a1', 10: 'a2 a3', 20: 'b1', 1020: 'b2' });
  });

  it('a waiter that leaves while waiting for a token does not use it, and an empty queue leaves no wake-up behind', () => {
    const scheduler = newScheduler();
    scheduler.run((helpers) => {
      const b = bench(scheduler, helpers, new ConcurrencyLimiter({ limit: 10, maxPerMinute: 60, scheduler }));
      b.queue(0, 'a1', { share: A, marble: '-|' });
      b.queue(0, 'a2', { share: A, marble: '-|', leaveAt: 10 });
      b.queue(1500, 'a3', { share: A, marble: '-|' });
      // The wake-up for a2's token (due at 1000) is a pending virtual action until a2 leaves.
      const dueAt1000 = () => scheduler.actions.filter((action) => action.delay === 1000).length;
      const pending: number[] = [];
      b.at(5, () => pending.push(dueAt1000()));
      b.at(11, () => pending.push(dueAt1000()));
      helpers.flush();
      expect(pending).toEqual([1, 0]);
      helpers.expectSubscriptions(b.subscriptions('a2')).toBe([]);
      // a3 finds the token a2 did not use
      helpers.expectSubscriptions(b.subscriptions('a3')).toBe('1500ms ^!');
    });
  });

  it('rejects a rate that is not a positive number', () => {
    expect(() => new ConcurrencyLimiter({ limit: 1, maxPerMinute: 0 })).toThrow(RangeError);
    expect(() => new ConcurrencyLimiter(1).setMaxPerMinute(Number.NaN)).toThrow(RangeError);
  });
});

describe('AdaptiveConcurrencyLimiter: passes the gates to the base limiter', () => {
  it('its config takes userCap, maxPerMinute and the scheduler', () => {
    const starts = run(
      (scheduler) => new AdaptiveConcurrencyLimiter({ max: 4, userCap: 1, maxPerMinute: 60, scheduler }),
      ({ queue }) => {
        queue(0, 'a1', { share: A, marble: '-----|' });
        queue(0, 'a2', { share: A, marble: '-|' });
        queue(0, 'b1', { share: B, marble: '-|' });
      },
    );
    // a2 waits for A's cap (free at 5) and its token (due at 2000): b1 took the one at 1000
    expect(starts).toEqual({ 0: 'a1', 1000: 'b1', 2000: 'a2' });
  });

  it('errors from the work still reach the caller', () => {
    newScheduler().run(({ expectObservable }) => {
      const limiter = new AdaptiveConcurrencyLimiter({ max: 1 });
      expectObservable(limiter.run(() => throwError(() => 'e'), A)).toBe('#', undefined, 'e');
    });
  });
});

describe('runEngine: two jobs of different users share one provider limiter', () => {
  it('the later, small job’s attempts interleave with the big one’s instead of waiting for all of them', () => {
    const scheduler = newScheduler();
    let big: string[] = [];
    let small: string[] = [];
    scheduler.run((helpers) => {
      const limiter = new AdaptiveConcurrencyLimiter({ max: 2 });
      const options = { ...virtualOptions(scheduler), globalLimiter: limiter };
      const bigPorts = scriptedPorts(helpers, () => ({ marble: '--i|' }));
      const smallPorts = scriptedPorts(helpers, () => ({ marble: '--i|' }));
      big = timeline(scheduler, runEngine({ jobId: 'big', userId: 'u1', stages: stages(10) }, bigPorts.ports, options));
      scheduler.schedule(() => {
        small = timeline(scheduler, runEngine({ jobId: 'small', userId: 'u2', stages: stages(2) }, smallPorts.ports, options));
      }, 1);
      helpers.flush();
      helpers.expectSubscriptions(smallPorts.subscriptions('0.0#1')).toBe('--^-!');
      helpers.expectSubscriptions(smallPorts.subscriptions('0.1#1')).toBe('----^-!');
    });
    const startFrames = (lines: string[]) => lines.filter((l) => l.includes(' start ')).map((l) => Number(l.split(' ')[0]));
    // first come first served would start the small job's two at 10
    expect(startFrames(small)).toEqual([2, 4]);
    expect(startFrames(big)).toEqual([0, 0, 2, 4, 6, 6, 8, 8, 10, 10]);
    expect(small.at(-2)).toBe('6 job completed [a00,a01]');
    expect(big.at(-2)).toBe('12 job completed [a00,a01,a02,a03,a04,a05,a06,a07,a08,a09]');
  });

  it('without a user, two jobs still take turns (jobs of the default user)', () => {
    const scheduler = newScheduler();
    let small: string[] = [];
    scheduler.run((helpers) => {
      const options = { ...virtualOptions(scheduler), globalLimiter: new AdaptiveConcurrencyLimiter({ max: 1 }) };
      timeline(scheduler, runEngine({ jobId: 'big', stages: stages(5) }, scriptedPorts(helpers, () => ({ marble: '--i|' })).ports, options));
      scheduler.schedule(() => {
        small = timeline(scheduler, runEngine({ jobId: 'small', stages: stages(1) }, scriptedPorts(helpers, () => ({ marble: '--i|' })).ports, options));
      }, 1);
    });
    expect(small.filter((l) => l.includes(' start '))).toEqual(['2 start 0.0#1']);
  });
});
