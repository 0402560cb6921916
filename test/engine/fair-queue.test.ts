import { describe, expect, it } from 'vitest';
import { FairQueue, type Share } from '../../src/engine/fair-queue.js';

/** `'A/a1'` = user A, job a1; priority 0 unless given. */
const share = (owner: string, priority = 0): Share => {
  const [userId, jobId] = owner.split('/') as [string, string];
  return { userId, jobId, priority };
};

/** Enqueues `[item, owner, priority?]` rows in order, then dequeues everything. */
function drainOrder(rows: readonly (readonly [item: string, owner: string, priority?: number])[], eligible?: (s: Share) => boolean): string[] {
  const queue = new FairQueue<string>();
  for (const [item, owner, priority] of rows) queue.enqueue(item, share(owner, priority));
  const out: string[] = [];
  for (let item = queue.dequeue(eligible); item !== undefined; item = queue.dequeue(eligible)) out.push(item);
  return out;
}

describe('FairQueue: which waiter goes next', () => {
  const cases: { name: string; rows: [string, string, number?][]; order: string[] }[] = [
    { name: 'empty: nothing', rows: [], order: [] },
    { name: 'one job: FIFO', rows: [['1', 'A/a'], ['2', 'A/a'], ['3', 'A/a']], order: ['1', '2', '3'] },
    {
      name: 'the highest priority with waiters goes first, whatever the arrival order',
      rows: [['low1', 'A/a', 0], ['high', 'B/b', 5], ['neg', 'C/c', -1], ['low2', 'A/a', 0], ['mid', 'A/x', 1]],
      order: ['high', 'mid', 'low1', 'low2', 'neg'],
    },
    {
      name: 'users take turns in order of arrival, not first come first served',
      rows: [['a1', 'A/a'], ['a2', 'A/a'], ['a3', 'A/a'], ['a4', 'A/a'], ['b1', 'B/b'], ['b2', 'B/b'], ['c1', 'C/c']],
      order: ['a1', 'b1', 'c1', 'a2', 'b2', 'a3', 'a4'],
    },
    {
      name: "within a user, its jobs take turns; the user's turn is one waiter whatever its jobs",
      rows: [['x1', 'A/x'], ['x2', 'A/x'], ['x3', 'A/x'], ['y1', 'A/y'], ['y2', 'A/y'], ['b1', 'B/b'], ['b2', 'B/b'], ['b3', 'B/b']],
      order: ['x1', 'b1', 'y1', 'b2', 'x2', 'b3', 'y2', 'x3'],
    },
    {
      name: 'turns are per priority: a user served at priority 1 is not skipped at priority 0',
      rows: [['a0', 'A/a', 0], ['b0', 'B/b', 0], ['a1', 'A/h', 1]],
      order: ['a1', 'a0', 'b0'],
    },
  ];
  for (const c of cases) {
    it(c.name, () => expect(drainOrder(c.rows)).toEqual(c.order));
  }

  it('the next user is the one after the user served last: a user arriving later gets the next turn', () => {
    const queue = new FairQueue<string>();
    for (const item of ['a1', 'a2', 'a3']) queue.enqueue(item, share('A/a'));
    expect(queue.dequeue()).toBe('a1');
    queue.enqueue('b1', share('B/b'));
    expect([queue.dequeue(), queue.dequeue(), queue.dequeue()]).toEqual(['b1', 'a2', 'a3']);
    expect(queue.dequeue()).toBeUndefined();
  });

  it('the user served last still counts as served last after its queue ran empty: a user that arrived meanwhile goes first', () => {
    const queue = new FairQueue<string>();
    queue.enqueue('a1', share('A/a'));
    expect(queue.dequeue()).toBe('a1'); // A's queue is empty now
    queue.enqueue('a2', share('A/a'));
    queue.enqueue('b1', share('B/b'));
    expect([queue.dequeue(), queue.dequeue()]).toEqual(['b1', 'a2']);
  });

  it('the same for jobs: a job served last whose lane ran empty keeps its place in its user\'s turn', () => {
    const queue = new FairQueue<string>();
    queue.enqueue('x1', share('A/x'));
    expect(queue.dequeue()).toBe('x1');
    queue.enqueue('x2', share('A/x'));
    queue.enqueue('y1', share('A/y'));
    expect([queue.dequeue(), queue.dequeue()]).toEqual(['y1', 'x2']);
  });

  it('a user that queues again after another was served joins at the end of the turn', () => {
    const queue = new FairQueue<string>();
    for (const [item, owner] of [['a1', 'A/a'], ['b1', 'B/b'], ['c1', 'C/c'], ['c2', 'C/c']] as const) queue.enqueue(item, share(owner));
    expect([queue.dequeue(), queue.dequeue()]).toEqual(['a1', 'b1']); // A left the turn when B was served
    queue.enqueue('a2', share('A/a'));
    queue.enqueue('b2', share('B/b'));
    // turn order is now B (served last), C, A: C, then A (rejoined at the end), then B
    expect([queue.dequeue(), queue.dequeue(), queue.dequeue(), queue.dequeue()]).toEqual(['c1', 'a2', 'b2', 'c2']);
  });

  it('a user whose waiters are all gone leaves the turn; the one after it goes next', () => {
    const queue = new FairQueue<string>();
    for (const [item, owner] of [['a1', 'A/a'], ['b1', 'B/b'], ['c1', 'C/c'], ['a2', 'A/a'], ['c2', 'C/c']] as const) queue.enqueue(item, share(owner));
    expect([queue.dequeue(), queue.dequeue()]).toEqual(['a1', 'b1']); // B is now empty and leaves
    expect([queue.dequeue(), queue.dequeue(), queue.dequeue()]).toEqual(['c1', 'a2', 'c2']);
  });
});

describe('FairQueue: remove, size', () => {
  it('remove takes a waiter out of any place; the rest keep their order', () => {
    const queue = new FairQueue<string>();
    for (const [item, owner] of [['a1', 'A/a'], ['a2', 'A/a'], ['a3', 'A/a'], ['b1', 'B/b']] as const) queue.enqueue(item, share(owner));
    expect(queue.size).toBe(4);
    expect(queue.remove('a2')).toBe(true);
    expect(queue.remove('a2')).toBe(false);
    expect(queue.remove('nobody')).toBe(false);
    expect(queue.size).toBe(3);
    expect([queue.dequeue(), queue.dequeue(), queue.dequeue(), queue.dequeue()]).toEqual(['a1', 'b1', 'a3', undefined]);
    expect(queue.isEmpty).toBe(true);
  });

  it('removing the last waiter of the user served last hands the turn to the user after it', () => {
    const queue = new FairQueue<string>();
    for (const [item, owner] of [['a1', 'A/a'], ['a2', 'A/a'], ['b1', 'B/b'], ['c1', 'C/c']] as const) queue.enqueue(item, share(owner));
    expect(queue.dequeue()).toBe('a1');
    queue.remove('a2'); // A leaves the turn it just had
    expect([queue.dequeue(), queue.dequeue()]).toEqual(['b1', 'c1']);
  });

  it('removing every waiter of a priority lets the lower one go', () => {
    const queue = new FairQueue<string>();
    queue.enqueue('high', share('A/a', 3));
    queue.enqueue('low', share('A/a', 0));
    queue.remove('high');
    expect(queue.dequeue()).toBe('low');
  });

  it('an item is queued at most once, and a priority must be a number', () => {
    const queue = new FairQueue<string>();
    queue.enqueue('x', share('A/a'));
    expect(() => queue.enqueue('x', share('B/b'))).toThrow(/already queued/);
    expect(() => queue.enqueue('y', share('A/a', Number.NaN))).toThrow(RangeError);
    expect(queue.size).toBe(1);
  });
});

describe('FairQueue: the eligible predicate (a user at its cap)', () => {
  it('skips refused users, keeps their waiters in place, and takes the next eligible one', () => {
    const capped = new Set(['A']);
    const eligible = (s: Share) => !capped.has(s.userId);
    const queue = new FairQueue<string>();
    for (const [item, owner] of [['a1', 'A/a'], ['a2', 'A/a'], ['b1', 'B/b'], ['b2', 'B/b']] as const) queue.enqueue(item, share(owner));
    expect([queue.dequeue(eligible), queue.dequeue(eligible), queue.dequeue(eligible)]).toEqual(['b1', 'b2', undefined]);
    expect(queue.size).toBe(2);
    capped.clear();
    expect([queue.dequeue(eligible), queue.dequeue(eligible)]).toEqual(['a1', 'a2']);
  });

  it('a refused user at a high priority does not block eligible users at a lower one', () => {
    expect(drainOrder([['h1', 'A/h', 9], ['l1', 'B/l', 0], ['h2', 'A/h', 9]], (s) => s.userId !== 'A')).toEqual(['l1']);
  });

  it('no eligible waiter: undefined, and nothing leaves the queue', () => {
    const queue = new FairQueue<string>();
    queue.enqueue('a1', share('A/a'));
    expect(queue.dequeue(() => false)).toBeUndefined();
    expect(queue.size).toBe(1);
    expect(queue.dequeue()).toBe('a1');
  });

  it('the predicate is asked with the waiting share, so a cap can be per job too', () => {
    expect(drainOrder([['x1', 'A/x'], ['y1', 'A/y'], ['x2', 'A/x']], (s) => s.jobId !== 'x')).toEqual(['y1']);
  });
});

describe('FairQueue: size of the work', () => {
  it('10,000 waiters in one job, then 10,000 across 1,000 users: every one comes out once, in turn order', () => {
    const queue = new FairQueue<number>();
    for (let i = 0; i < 10_000; i++) queue.enqueue(i, share('A/a'));
    // drop 1,500 from the middle at once, as a halt does
    for (let i = 2_000; i < 3_500; i++) queue.remove(i);
    const fifo: number[] = [];
    for (let item = queue.dequeue(); item !== undefined; item = queue.dequeue()) fifo.push(item);
    expect(fifo).toEqual(Array.from({ length: 10_000 }, (_, i) => i).filter((i) => i < 2_000 || i >= 3_500));

    for (let i = 0; i < 10_000; i++) queue.enqueue(i, { userId: `u${i % 1_000}`, jobId: 'j', priority: 0 });
    const out: number[] = [];
    for (let item = queue.dequeue(); item !== undefined; item = queue.dequeue()) out.push(item);
    // users take turns, so the waiters come out in their enqueue order here
    expect(out).toEqual(Array.from({ length: 10_000 }, (_, i) => i));
    expect(queue.isEmpty).toBe(true);
  });
});
