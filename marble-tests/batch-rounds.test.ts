/**
 * Batch mode's rounds (`fillBatchRounds`) in virtual time: when a batch is sent, how often
 * it is polled (first after `firstMs`, doubling, at most `maxMs`), how its responses become
 * deliveries and the next round's requests, the budget, a refused create's backoff, a
 * batch that fails whole, cancel, and resume of a batch an earlier run sent.
 */
import { EMPTY, NEVER, Subject, type Observable } from 'rxjs';
import type { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { PipelineError, type ErrorClass } from '../src/domain/error-class.js';
import { batchRequestKey, type AttemptRequest, type BatchResponse, type BatchStatus, type Delivery } from '../src/domain/ports.js';
import { freshStageState, type StageState } from '../src/domain/resume-state.js';
import { JobControl } from '../src/engine/job-control.js';
import { CostCap } from '../src/engine/cost-cap.js';
import type { AttemptPricing } from '../src/domain/price-table.js';
import { fillBatchRounds, type BatchRound, type BatchStagePorts, type OpenBatch } from '../src/operators/fill-batch-rounds.js';
import type { StageItem } from '../src/operators/fill-slots.js';
import { IMAGE, compact, key, newScheduler, stages } from './support.js';

/** What the provider answers for one request of a batch: an image, an error, or nothing. */
type Answer = 'image' | 'missing' | ErrorClass;

interface Provider {
  /** Per round: polls that see the batch still running before it ends (default 0). */
  readonly runningPolls?: (round: number) => number;
  /** How the batch of a round ends. Default `succeeded`. */
  readonly ends?: (round: number) => BatchStatus['state'];
  /** Each request's answer in a batch that succeeded. Default an image. */
  readonly answer?: (request: AttemptRequest) => Answer;
  /** A create refused with this error (and server delay), per round. */
  readonly refuseCreate?: (round: number) => { errorClass: ErrorClass; retryAfterMs?: number } | null;
  /** A poll (1-based count per batch) that fails with this error. */
  readonly pollError?: (poll: number) => ErrorClass | null;
}

interface Run {
  readonly lines: string[];
  /** `"<frame> submit r<round> [keys]"`, `"<frame> poll <name>"`, `"<frame> cancel <name>"`. */
  readonly calls: string[];
}

function runBatchStage(options: {
  quantity: number;
  provider: Provider;
  budget?: { maxAttemptsPerSlot?: number; maxReplacementsPerStage?: number };
  cancelAt?: number;
  /** Another stage halts the job (a quota gone) at this frame. */
  haltAt?: number;
  /** The worker shuts down (the engine's `stop$`: halt `cancelled`, not a cancel) at this frame. */
  stopAt?: number;
  /** Prices: every estimate and every answer `usd`; the job's cap (null: none). */
  cost?: { usd: number; cap: number | null };
  /** Costs of the events, by their compact line's key (`0.1#1`). */
  costs?: Map<string, number | null>;
  open?: (requests: (slots: number[], attempt: number) => AttemptRequest[]) => OpenBatch;
  state?: StageState;
}): Run {
  const scheduler: TestScheduler = newScheduler();
  const lines: string[] = [];
  const calls: string[] = [];
  scheduler.run(({ cold }) => {
    const stage = stages(options.quantity)[0]!;
    const job = new JobControl('j', options.quantity, 0);
    const rounds = new Map<string, { round: number; requests: readonly AttemptRequest[]; polls: number }>();
    const { provider } = options;
    const ports: BatchStagePorts = {
      submit: (round: BatchRound) => {
        calls.push(`${scheduler.now()} submit r${round.round} [${round.requests.map(key).join(' ')}]`);
        const refused = provider.refuseCreate?.(round.round);
        if (refused) return cold('-#', undefined, new PipelineError(refused.errorClass, 'create refused', { retryAfterMs: refused.retryAfterMs }));
        const name = `batches/r${round.round}`;
        rounds.set(name, { round: round.round, requests: round.requests, polls: 0 });
        return cold('-(n|)', { n: name });
      },
      poll: (name) => {
        calls.push(`${scheduler.now()} poll ${name}`);
        const batch = rounds.get(name)!;
        batch.polls++;
        const failed = provider.pollError?.(batch.polls);
        if (failed) return cold('#', undefined, new PipelineError(failed, `poll ${failed}`));
        if (batch.polls <= (provider.runningPolls?.(batch.round) ?? 0)) return cold('(s|)', { s: { name, state: 'running' } as BatchStatus });
        const state = provider.ends?.(batch.round) ?? 'succeeded';
        const responses: BatchResponse[] = [];
        for (const request of batch.requests) {
          const answer = provider.answer?.(request) ?? 'image';
          if (answer === 'missing') continue;
          responses.push(answer === 'image' ? { key: batchRequestKey(request), image: IMAGE } : { key: batchRequestKey(request), error: new PipelineError(answer, `scripted ${answer}`) });
        }
        return cold('(s|)', { s: { name, state, ...(state === 'succeeded' ? { responses } : { error: `scripted ${state}` }) } as BatchStatus });
      },
      cancel: (name) => {
        calls.push(`${scheduler.now()} cancel ${name}`);
        return EMPTY;
      },
      deliver: (request): Observable<Delivery> => cold('--(d|)', { d: { attachId: `a${request.slotIndex}`, duplicate: false } }),
    };
    const cancel$ = new Subject<void>();
    if (options.cancelAt !== undefined) scheduler.schedule(() => cancel$.next(), options.cancelAt);
    if (options.haltAt !== undefined) scheduler.schedule(() => job.recordFailure('quota_exhausted'), options.haltAt);
    if (options.stopAt !== undefined) scheduler.schedule(() => job.halt('cancelled'), options.stopAt);
    const usd = options.cost?.usd;
    const pricing: AttemptPricing | undefined =
      usd === undefined ? undefined : { model: 'm', priced: true, estimateUsd: () => usd, costUsd: () => usd, possiblyBilledUsd: () => usd };
    const cap = options.cost?.cap != null ? new CostCap(options.cost.cap, 0) : null;
    const requestsOf = (slots: number[], attempt: number): AttemptRequest[] =>
      slots.map((slot) => ({ jobId: 'j', stageIndex: 0, slotIndex: slot, attempt, prompt: stage.prompt, aspectRatio: stage.aspectRatio, inputAttachId: stage.inputAttachId }));
    const open = options.open?.(requestsOf);
    if (open?.name) rounds.set(open.name, { round: open.round, requests: open.requests, polls: 0 });
    const stage$ = fillBatchRounds({
      stage,
      state: options.state ?? freshStageState(options.quantity),
      ports,
      budget: { maxAttemptsPerSlot: options.budget?.maxAttemptsPerSlot ?? 5, maxReplacementsPerStage: options.budget?.maxReplacementsPerStage ?? 10 },
      backoff: { baseMs: 10, multiplier: 2, maxMs: 1000 },
      job,
      cancel$: options.cancelAt !== undefined ? cancel$ : NEVER,
      scheduler,
      random: () => 0.5,
      polling: { firstMs: 5, maxMs: 20 },
      deliverConcurrency: 2,
      ...(open ? { open } : {}),
      ...(pricing ? { cost: { pricing, cap } } : {}),
    });
    scheduler.schedule(() => {
      stage$.subscribe({
        next: (item: StageItem) => {
          lines.push(`${scheduler.now()} ${item.kind === 'event' ? compact(item.event) : `result ${item.result.delivered}/${item.result.quantity}`}`);
          const event = item.kind === 'event' ? item.event : null;
          if (event && (event.type === 'slot:delivered' || event.type === 'attempt:failed')) options.costs?.set(key({ stageIndex: event.stage, slotIndex: event.slot, attempt: event.attempt }), event.cost?.usd ?? null);
        },
        complete: () => lines.push(`${scheduler.now()} |`),
      });
    });
  });
  return { lines, calls };
}

describe('batch mode: rounds of one stage (fillBatchRounds)', () => {
  it('sends the slots as one batch, polls at 5, 10, 20 frames apart until it ends, delivers each image; once the round has settled, a failed response goes into round 2', () => {
    const { lines, calls } = runBatchStage({
      quantity: 3,
      provider: { runningPolls: (r) => (r === 1 ? 3 : 0), answer: (req) => (req.slotIndex === 1 && req.attempt === 1 ? 'overloaded' : 'image') },
    });
    expect(calls).toEqual([
      '0 submit r1 [0.0#1 0.1#1 0.2#1]',
      '1 poll batches/r1',
      '6 poll batches/r1',
      '16 poll batches/r1',
      '36 poll batches/r1',
      // Round 1's deliveries (2 frames each, two at a time) end at 38: then round 2.
      '38 submit r2 [0.1#2]',
      '39 poll batches/r2',
    ]);
    expect(lines).toEqual([
      '0 start 0.0#1',
      '0 start 0.1#1',
      '0 start 0.2#1',
      '36 fail 0.1#1 overloaded retry+0',
      '38 deliver 0.0#1 a0 1/3',
      '38 deliver 0.2#1 a2 2/3',
      '38 start 0.1#2',
      '41 deliver 0.1#2 a1 3/3',
      '41 stage 0 completed 3/3',
      '41 result 3/3',
      '41 |',
    ]);
  });

  it('a request with no response in the batch is a no_image failure and is sent again', () => {
    const { lines, calls } = runBatchStage({ quantity: 2, provider: { answer: (req) => (req.slotIndex === 0 && req.attempt === 1 ? 'missing' : 'image') } });
    expect(calls.filter((c) => c.includes('submit'))).toEqual(['0 submit r1 [0.0#1 0.1#1]', '3 submit r2 [0.0#2]']);
    expect(lines).toContain('1 fail 0.0#1 no_image retry+0');
    expect(lines.at(-3)).toBe('6 stage 0 completed 2/2');
  });

  it('a batch that fails whole fails each attempt; the slot budget ends the stage short (budget_exhausted)', () => {
    const { lines, calls } = runBatchStage({ quantity: 2, provider: { ends: () => 'failed' }, budget: { maxAttemptsPerSlot: 2 } });
    expect(calls.filter((c) => c.includes('submit'))).toEqual(['0 submit r1 [0.0#1 0.1#1]', '1 submit r2 [0.0#2 0.1#2]']);
    expect(lines.slice(-3)).toEqual(['2 stage 0 short 2 budget_exhausted overloaded', '2 result 0/2', '2 |']);
    expect(lines.filter((l) => l.includes('fail'))).toHaveLength(4);
  });

  it('an expired batch fails its attempts as timeouts and they go into the next round', () => {
    const { lines } = runBatchStage({ quantity: 1, provider: { ends: (r) => (r === 1 ? 'expired' : 'succeeded') } });
    expect(lines).toContain('1 fail 0.0#1 timeout retry+0');
    expect(lines).toContain('4 deliver 0.0#2 a0 1/1');
  });

  it('a create refused with a 429 fails the round\'s attempts; the next round waits the server\'s delay', () => {
    const { calls } = runBatchStage({ quantity: 2, provider: { refuseCreate: (r) => (r === 1 ? { errorClass: 'rate_limited', retryAfterMs: 30 } : null) } });
    expect(calls.filter((c) => c.includes('submit'))).toEqual(['0 submit r1 [0.0#1 0.1#1]', '31 submit r2 [0.0#2 0.1#2]']);
  });

  it('a non-retryable answer stops the stage: no further round', () => {
    const { lines, calls } = runBatchStage({ quantity: 2, provider: { answer: (req) => (req.slotIndex === 0 ? 'prompt_blocked' : 'image') } });
    expect(calls.filter((c) => c.includes('submit'))).toHaveLength(1);
    expect(lines.slice(-3)).toEqual(['3 stage 0 short 1 non_retryable prompt_blocked', '3 result 1/2', '3 |']);
  });

  it('cancel while the batch runs: the batch is cancelled at the provider, its attempts end cancelled, the stage short', () => {
    const { lines, calls } = runBatchStage({ quantity: 2, provider: { runningPolls: () => 100 }, cancelAt: 12 });
    expect(calls).toEqual(['0 submit r1 [0.0#1 0.1#1]', '1 poll batches/r1', '6 poll batches/r1', '12 cancel batches/r1']);
    expect(lines.slice(-5)).toEqual(['12 fail 0.0#1 cancelled', '12 fail 0.1#1 cancelled', '12 stage 0 short 2 cancelled cancelled', '12 result 0/2', '12 |']);
  });

  it('resume: the batch an earlier run sent is polled, not sent again, and its attempts are not started again', () => {
    const { lines, calls } = runBatchStage({
      quantity: 2,
      state: [
        { attachId: null, attemptsUsed: 1, attemptsCharged: 0 },
        { attachId: null, attemptsUsed: 1, attemptsCharged: 0 },
      ] as unknown as StageState,
      open: (requests) => ({ round: 1, name: 'batches/r1', requests: requests([0, 1], 1) }),
      provider: { runningPolls: () => 1 },
    });
    expect(calls).toEqual(['0 poll batches/r1', '5 poll batches/r1']);
    expect(lines.filter((l) => l.includes('start'))).toEqual([]);
    expect(lines.slice(-3)).toEqual(['7 stage 0 completed 2/2', '7 result 2/2', '7 |']);
  });

  it('resume with slots left over: the open batch is polled, then the slots whose attempts ended in the earlier run (no replacement sent yet) join the next round with its failures', () => {
    const { lines, calls } = runBatchStage({
      quantity: 3,
      // Round 2 was out for slots 0 and 1 (attempt 2, started: charged); slot 2's attempt 1 failed and the run died before round 3.
      state: [
        { attachId: null, attemptsUsed: 2, attemptsCharged: 2 },
        { attachId: null, attemptsUsed: 2, attemptsCharged: 2 },
        { attachId: null, attemptsUsed: 1, attemptsCharged: 1 },
      ],
      open: (requests) => ({ round: 2, name: 'batches/r2', requests: requests([0, 1], 2) }),
      provider: { answer: (req) => (req.slotIndex === 1 && req.attempt === 2 ? 'overloaded' : 'image') },
    });
    expect(calls).toEqual(['0 poll batches/r2', '2 submit r3 [0.1#3 0.2#2]', '3 poll batches/r3']);
    expect(lines.filter((l) => l.includes('start'))).toEqual(['2 start 0.1#3', '2 start 0.2#2']);
    expect(lines.slice(-3)).toEqual(['5 stage 0 completed 3/3', '5 result 3/3', '5 |']);
  });

  it('a shutdown (the job halted `cancelled`, not cancelled) leaves the batch running at the provider: no cancel, no end for its attempts, no next round (the stage ends as fillSlots\'s does: job_aborted)', () => {
    const { lines, calls } = runBatchStage({ quantity: 2, stopAt: 3, provider: { runningPolls: () => 10 } });
    expect(calls).toEqual(['0 submit r1 [0.0#1 0.1#1]', '1 poll batches/r1']);
    // The attempts stay `started` (no fail event): the run that takes the job over polls the same batch.
    expect(lines).toEqual(['0 start 0.0#1', '0 start 0.1#1', '3 stage 0 short 2 job_aborted cancelled', '3 result 0/2', '3 |']);
  });

  it('cost: each answer carries its price; with a cap, a round sends only the requests whose estimates fit, and the stage ends cost_cap', () => {
    const costs = new Map<string, number | null>();
    const { lines, calls } = runBatchStage({
      quantity: 4,
      cost: { usd: 0.5, cap: 1.6 },
      costs,
      provider: { answer: (req) => (req.slotIndex === 1 ? 'overloaded' : 'image') },
    });
    // 0.5 x 3 fits 1.6, a fourth does not: three requests go out. Slot 1's failed answer cost nothing (no usage):
    // its replacement would fit (1.0 spent + 0.5), but the cap already stopped new attempts.
    expect(calls).toEqual(['0 submit r1 [0.0#1 0.1#1 0.2#1]', '1 poll batches/r1']);
    expect(Object.fromEntries(costs)).toEqual({ '0.0#1': 0.5, '0.1#1': null, '0.2#1': 0.5 });
    expect(lines.slice(-3)).toEqual(['3 stage 0 short 2 cost_cap null', '3 result 2/4', '3 |']);
  });

  it('a poll that fails for a while (the network) is tried again on the same schedule; the batch is read once it answers', () => {
    const { calls, lines } = runBatchStage({ quantity: 1, provider: { pollError: (n) => (n <= 2 ? 'network' : null) } });
    expect(calls).toEqual(['0 submit r1 [0.0#1]', '1 poll batches/r1', '6 poll batches/r1', '16 poll batches/r1']);
    expect(lines.slice(-3)).toEqual(['18 stage 0 completed 1/1', '18 result 1/1', '18 |']);
  });

  it('a poll refused for good (auth) fails the batch\'s attempts with it and stops the job', () => {
    const { calls, lines } = runBatchStage({ quantity: 2, provider: { pollError: () => 'auth' } });
    // The job halts on the first auth failure: the batch is cancelled (best effort: the key is refused).
    expect(calls).toEqual(['0 submit r1 [0.0#1 0.1#1]', '1 poll batches/r1', '1 cancel batches/r1']);
    expect(lines.slice(-3)).toEqual(['1 stage 0 short 2 non_retryable auth', '1 result 0/2', '1 |']);
  });

  it('a job halted by another stage (its quota gone) cancels this stage\'s batch and sends no other round', () => {
    const { calls, lines } = runBatchStage({ quantity: 2, provider: { runningPolls: () => 100 }, haltAt: 8 });
    expect(calls).toEqual(['0 submit r1 [0.0#1 0.1#1]', '1 poll batches/r1', '6 poll batches/r1', '8 cancel batches/r1']);
    expect(lines.slice(-5)).toEqual(['8 fail 0.0#1 cancelled', '8 fail 0.1#1 cancelled', '8 stage 0 short 2 job_aborted quota_exhausted', '8 result 0/2', '8 |']);
  });
});
