import { describe, expect, it } from 'vitest';
import { PipelineError, type ErrorClass } from '../../src/domain/error-class.js';
import { freshStageState, type StageState } from '../../src/domain/resume-state.js';
import { DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE, StageLedger, type JobOutcome, type RetryBudget } from '../../src/engine/stage-ledger.js';

const BUDGET: RetryBudget = { maxAttemptsPerSlot: 5, maxReplacementsPerStage: 10 };
const RUNNING: JobOutcome = { cancelled: false, haltedBy: null };
const failure = (errorClass: ErrorClass) => new PipelineError(errorClass, 'x');

const ledger = (state: StageState, budget: Partial<RetryBudget> = {}) => new StageLedger(0, state.length, { ...BUDGET, ...budget }, state);

describe('StageLedger: which slots a stage requests first (rule 1, resume)', () => {
  const cases: { name: string; state: StageState; budget?: Partial<RetryBudget>; requests: [slot: number, attempt: number][]; replacementsUsed: number }[] = [
    { name: 'a fresh stage requests every slot, attempt 1, no budget spent', state: freshStageState(3), requests: [[0, 1], [1, 1], [2, 1]], replacementsUsed: 0 },
    {
      name: 'a resumed stage skips filled slots and numbers on from the used attempts',
      state: [
        { attachId: 'old0', attemptsUsed: 1 },
        { attachId: null, attemptsUsed: 2 },
        { attachId: null, attemptsUsed: 0 },
        { attachId: 'old3', attemptsUsed: 3 },
      ],
      // slot 1's next attempt is a replacement (2 charged, `attemptsCharged` omitted = used): 1 + 2 (slot 3's) + 1
      requests: [[1, 3], [2, 1]],
      replacementsUsed: 4,
    },
    {
      name: 'abandoned attempts are not charged: numbers go on, the slot starts a fresh budget and no stage budget',
      state: [{ attachId: null, attemptsUsed: 2, attemptsCharged: 0 }],
      requests: [[0, 3]],
      replacementsUsed: 0,
    },
    {
      name: 'a charged attempt makes the next one a replacement, charged to the stage',
      state: [{ attachId: null, attemptsUsed: 3, attemptsCharged: 1 }],
      requests: [[0, 4]],
      replacementsUsed: 1,
    },
    {
      name: 'a slot that spent its budget before the restart is not requested',
      state: [{ attachId: null, attemptsUsed: 3 }, { attachId: null, attemptsUsed: 0 }],
      budget: { maxAttemptsPerSlot: 3 },
      requests: [[1, 1]],
      replacementsUsed: 2,
    },
    {
      name: 'replacements are counted from charged attempts, filled slots included (no refund on restart)',
      state: [{ attachId: 'old0', attemptsUsed: 3, attemptsCharged: 3 }, { attachId: null, attemptsUsed: 1, attemptsCharged: 1 }],
      budget: { maxReplacementsPerStage: 3 },
      requests: [[1, 2]],
      replacementsUsed: 3,
    },
    {
      name: 'a stage whose replacement budget was spent before the restart requests no replacement',
      state: [{ attachId: 'old0', attemptsUsed: 3, attemptsCharged: 3 }, { attachId: null, attemptsUsed: 1, attemptsCharged: 1 }, { attachId: null, attemptsUsed: 0 }],
      budget: { maxReplacementsPerStage: 2 },
      requests: [[2, 1]],
      replacementsUsed: 2,
    },
  ];
  it.each(cases)('$name', ({ state, budget, requests, replacementsUsed }) => {
    const books = ledger(state, budget);
    expect(books.initialRequests().map((r) => [r.slot, r.attempt])).toEqual(requests);
    expect(books.replacementsUsed).toBe(replacementsUsed);
  });

  it('refuses a resume state whose slot count is not the quantity', () => {
    expect(() => new StageLedger(0, 2, BUDGET, freshStageState(3))).toThrow(RangeError);
  });
});

describe('StageLedger: replacements after a failure (rules 3, 4)', () => {
  // Each row: a budget, then one slot failing (retryable) until the ledger says no more.
  const cases: { name: string; budget: Partial<RetryBudget>; slots: number; attemptsPerSlot: (number | null)[][] }[] = [
    { name: 'a slot gets maxAttemptsPerSlot attempts in all', budget: { maxAttemptsPerSlot: 3 }, slots: 1, attemptsPerSlot: [[2, 3, null]] },
    { name: 'one attempt per slot means no replacement', budget: { maxAttemptsPerSlot: 1 }, slots: 1, attemptsPerSlot: [[null]] },
    {
      name: 'the stage budget is shared: slot 0 spends it, the other slots find it spent',
      budget: { maxReplacementsPerStage: 2 },
      slots: 3,
      attemptsPerSlot: [[2, 3, null], [null], [null]],
    },
    { name: 'no stage budget: first attempts only', budget: { maxReplacementsPerStage: 0 }, slots: 2, attemptsPerSlot: [[null], [null]] },
  ];
  it.each(cases)('$name', ({ budget, slots, attemptsPerSlot }) => {
    const books = ledger(freshStageState(slots), budget);
    const seen: (number | null)[][] = [];
    for (const { slot, attempt } of books.initialRequests()) {
      const replacements: (number | null)[] = [];
      let next: number | null = attempt;
      while (next !== null) {
        books.start(slot, next);
        const verdict = books.fail(slot, failure('overloaded'), false);
        expect(verdict.stopsStage).toBe(false);
        next = verdict.replacement?.attempt ?? null;
        if (verdict.replacement) expect(verdict.replacement.slot).toBe(slot);
        replacements.push(next);
      }
      seen.push(replacements);
    }
    expect(seen).toEqual(attemptsPerSlot);
  });

  it('a halted stage admits no replacement and charges nothing for it', () => {
    const books = ledger(freshStageState(1));
    books.initialRequests();
    books.start(0, 1);
    expect(books.fail(0, failure('overloaded'), true).replacement).toBeNull();
    expect(books.replacementsUsed).toBe(0);
  });

  it('the first non-retryable class stops the stage, and a stopped stage replaces nothing', () => {
    const books = ledger(freshStageState(3));
    books.initialRequests();
    for (const slot of [0, 1, 2]) books.start(slot, 1);
    expect(books.fail(0, failure('prompt_blocked'), false)).toEqual({ stopsStage: true, replacement: null });
    expect(books.fail(1, failure('invalid_request'), false)).toEqual({ stopsStage: false, replacement: null });
    expect(books.fail(2, failure('overloaded'), false)).toEqual({ stopsStage: false, replacement: null });
    expect(books.stoppedBy).toBe('prompt_blocked');
    expect(books.lastErrorClass).toBe('overloaded');
  });

  it.each(['auth', 'quota_exhausted'] as const)('%s halts the job, not the stage: the ledger gives no replacement and does not stop', (errorClass) => {
    const books = ledger(freshStageState(1));
    books.initialRequests();
    books.start(0, 1);
    expect(books.fail(0, failure(errorClass), false)).toEqual({ stopsStage: false, replacement: null });
    expect(books.stoppedBy).toBeNull();
  });
});

describe('StageLedger: a slot is filled once, never more than quantity (rule 2)', () => {
  it('a second delivery of a slot fills nothing', () => {
    const books = ledger(freshStageState(2));
    expect(books.deliver(0, 'a')).toBe(true);
    expect(books.deliver(0, 'b')).toBe(false);
    expect(books.deliver(1, 'c')).toBe(true);
    expect(books.deliver(1, 'd')).toBe(false);
    expect(books.progress).toEqual({ delivered: 2, total: 2 });
    expect(books.result(RUNNING)).toEqual({ index: 0, quantity: 2, delivered: 2, attachIds: ['a', 'c'], shortfall: null });
  });

  it('a slot filled before the restart cannot be filled again', () => {
    const books = ledger([{ attachId: 'old', attemptsUsed: 1 }]);
    expect(books.deliver(0, 'new')).toBe(false);
    expect(books.result(RUNNING).attachIds).toEqual(['old']);
  });
});

describe('StageLedger: the shortfall reason', () => {
  // Each row: what the stage's own failures were, what the job knows, the shortfall of a 2-slot stage with slot 0 filled.
  const cases: { name: string; failures: ErrorClass[]; job: JobOutcome; shortfall: unknown }[] = [
    { name: 'budget_exhausted with the last error class', failures: ['network', 'overloaded'], job: RUNNING, shortfall: { count: 1, reason: 'budget_exhausted', errorClass: 'overloaded' } },
    { name: 'budget_exhausted with no failure (budget spent before a restart)', failures: [], job: RUNNING, shortfall: { count: 1, reason: 'budget_exhausted', errorClass: null } },
    { name: 'non_retryable: the class that stopped the stage, not the last one', failures: ['prompt_blocked', 'overloaded'], job: RUNNING, shortfall: { count: 1, reason: 'non_retryable', errorClass: 'prompt_blocked' } },
    { name: 'non_retryable: the stage met the job-wide failure itself', failures: ['auth'], job: { cancelled: false, haltedBy: 'auth' }, shortfall: { count: 1, reason: 'non_retryable', errorClass: 'auth' } },
    { name: 'job_aborted: another stage met it', failures: ['overloaded'], job: { cancelled: false, haltedBy: 'quota_exhausted' }, shortfall: { count: 1, reason: 'job_aborted', errorClass: 'quota_exhausted' } },
    { name: 'job_aborted: the run was stopped (shutdown)', failures: [], job: { cancelled: false, haltedBy: 'cancelled' }, shortfall: { count: 1, reason: 'job_aborted', errorClass: 'cancelled' } },
    { name: 'cancelled wins over every other reason', failures: ['prompt_blocked'], job: { cancelled: true, haltedBy: 'auth' }, shortfall: { count: 1, reason: 'cancelled', errorClass: 'cancelled' } },
  ];
  it.each(cases)('$name', ({ failures, job, shortfall }) => {
    const books = ledger(freshStageState(2));
    books.initialRequests();
    books.deliver(0, 'a');
    for (const errorClass of failures) books.fail(1, failure(errorClass), false);
    expect(books.shortfall(job)).toEqual(shortfall);
    expect(books.result(job)).toEqual({ index: 0, quantity: 2, delivered: 1, attachIds: ['a'], shortfall });
  });

  it('a full stage has no shortfall, whatever the job says', () => {
    const books = ledger(freshStageState(1));
    books.deliver(0, 'a');
    expect(books.shortfall({ cancelled: true, haltedBy: 'cancelled' })).toBeNull();
  });
});

describe('StageLedger: safety blocks in a row stop the stage (shortfall safety_blocked)', () => {
  const safety = failure('safety_blocked');

  it('the default is 3 in a row: the third stops the stage, the first two get replacements', () => {
    expect(DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE).toBe(3);
    const books = ledger(freshStageState(4));
    books.initialRequests();
    books.start(0, 1);
    books.start(1, 1);
    books.start(2, 1);
    expect(books.fail(0, safety, false)).toEqual({ stopsStage: false, replacement: { slot: 0, attempt: 2 } });
    expect(books.fail(1, safety, false)).toEqual({ stopsStage: false, replacement: { slot: 1, attempt: 2 } });
    expect(books.fail(2, safety, false)).toEqual({ stopsStage: true, replacement: null });
    expect(books.stoppedBy).toBe('safety_blocked');
    expect(books.shortfall(RUNNING)).toEqual({ count: 4, reason: 'safety_blocked', errorClass: 'safety_blocked' });
  });

  it('a delivery breaks the row; other failures neither count nor break it', () => {
    const books = ledger(freshStageState(3), { maxSafetyBlocksInRow: 2 });
    books.initialRequests();
    books.start(0, 1);
    books.start(1, 1);
    books.start(2, 1);
    expect(books.fail(0, safety, false).stopsStage).toBe(false);
    expect(books.deliver(1, 'a1')).toBe(true);
    books.start(0, 2);
    expect(books.fail(0, safety, false).stopsStage).toBe(false); // 1 in a row again
    expect(books.fail(2, failure('rate_limited'), false).stopsStage).toBe(false);
    books.start(0, 3);
    expect(books.fail(0, safety, false)).toEqual({ stopsStage: true, replacement: null }); // 2 in a row: the rate limit did not break it
    expect(books.result(RUNNING)).toMatchObject({ delivered: 1, shortfall: { count: 2, reason: 'safety_blocked', errorClass: 'safety_blocked' } });
  });

  it('a stage stopped by a non-retryable failure keeps non_retryable; later safety blocks do not change it', () => {
    const books = ledger(freshStageState(2), { maxSafetyBlocksInRow: 1 });
    books.initialRequests();
    books.start(0, 1);
    books.start(1, 1);
    expect(books.fail(0, failure('prompt_blocked'), false).stopsStage).toBe(true);
    expect(books.fail(1, safety, true)).toEqual({ stopsStage: false, replacement: null });
    expect(books.shortfall(RUNNING)).toEqual({ count: 2, reason: 'non_retryable', errorClass: 'prompt_blocked' });
  });
});
