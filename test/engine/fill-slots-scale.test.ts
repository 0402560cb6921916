import type { RunHelpers } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import type { ErrorClass } from '../../src/domain/error-class.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { runEngine, type EngineOptions } from '../../src/streams/engine.js';
import { newScheduler, scriptedPorts, timeline, virtualOptions } from '../../marble-tests/support.js';

// A halt drops every request still waiting for a permit, synchronously. A stage limit
// built on mergeMap's `concurrent` argument would subscribe those queued requests one
// inside the other and overflow the stack, losing them silently (rxjs #3609; with
// rxjs 7.8 and an inner shaped like an attempt, about 150 queued requests are enough).
// These runs, at the largest quantity a job file may ask for by default, guard the
// permit-based limit, which drains its queue in a loop.

const QUANTITY = 1000;

function run(answer: { marble: string; error?: ErrorClass }, options: (helpers: RunHelpers) => Partial<EngineOptions>) {
  const scheduler = newScheduler();
  const stages = parseJobSpec({ userId: 'u', stages: [{ quantity: QUANTITY, prompt: 'p', mergedImageAttachId: 'in' }] }, { maxQuantity: QUANTITY }).stages;
  let lines: string[] = [];
  let calls: string[] = [];
  scheduler.run((helpers) => {
    const scripted = scriptedPorts(helpers, () => answer);
    calls = scripted.calls;
    lines = timeline(scheduler, runEngine({ jobId: 'j', stages }, scripted.ports, { ...virtualOptions(scheduler), ...options(helpers) }));
  });
  return { lines, calls };
}

describe('fillSlots at scale: a halt with a thousand queued requests ends the stage', () => {
  it('a non-retryable failure drops the requests queued for the stage permit', () => {
    const { lines, calls } = run({ marble: '-#', error: 'prompt_blocked' }, () => ({ stageConcurrency: 1 }));
    expect(calls).toEqual(['0.0#1']);
    expect(lines.slice(-3)).toEqual([`1 stage 0 short ${QUANTITY} non_retryable prompt_blocked`, '1 job failed []', '1 |']);
  });

  it('a non-retryable failure drops the requests queued for the global permit', () => {
    const { lines, calls } = run({ marble: '-#', error: 'prompt_blocked' }, () => ({ stageConcurrency: QUANTITY, globalConcurrency: 1 }));
    expect(calls).toEqual(['0.0#1']);
    expect(lines.slice(-3)).toEqual([`1 stage 0 short ${QUANTITY} non_retryable prompt_blocked`, '1 job failed []', '1 |']);
  });

  it('a shutdown lets the running attempt finish and drops the queue', () => {
    const { lines, calls } = run({ marble: '---i|' }, (helpers) => ({ stageConcurrency: 1, stop$: helpers.hot('-x') }));
    expect(calls).toEqual(['0.0#1']);
    expect(lines.slice(-4)).toEqual([`3 deliver 0.0#1 a00 1/${QUANTITY}`, `3 stage 0 short ${QUANTITY - 1} job_aborted cancelled`, '3 job partial [a00]', '3 |']);
  });

  it('a cancel aborts the running attempt and drops the queue', () => {
    const { lines, calls } = run({ marble: '---i|' }, (helpers) => ({ stageConcurrency: 1, cancel$: helpers.hot('-x') }));
    expect(calls).toEqual(['0.0#1']);
    expect(lines.slice(-4)).toEqual(['1 fail 0.0#1 cancelled', `1 stage 0 short ${QUANTITY} cancelled cancelled`, '1 job cancelled []', '1 |']);
  });
});
