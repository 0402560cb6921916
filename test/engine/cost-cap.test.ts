import { describe, expect, it } from 'vitest';
import { pricingFor } from '../../src/domain/price-table.js';
import { attemptCostOf, chargedUsd, CostCap } from '../../src/engine/cost-cap.js';
import { JobControl } from '../../src/engine/job-control.js';
import { StageLedger } from '../../src/engine/stage-ledger.js';
import { freshStageState } from '../../src/domain/resume-state.js';

const pricing = pricingFor({ m: { perImageUsd: { default: 0.04 }, inputPerMillionUsd: 1 } }, 'm');
const request = { prompt: '', inputAttachId: null };

describe('CostCap', () => {
  it('admits while spent + in flight + the estimate stays within the cap (equal is within)', () => {
    const cap = new CostCap(0.12);
    expect([cap.reserve(0.04), cap.reserve(0.04), cap.reserve(0.04)]).toEqual([true, true, true]);
    expect(cap.reserve(0.04)).toBe(false);
    cap.settle(0.04, 0);
    expect(cap.inFlightUsd).toBeCloseTo(0.08, 12);
    expect(cap.reserve(0.04)).toBe(true);
  });

  it('starts from what earlier runs spent and adds what answers cost', () => {
    const cap = new CostCap(0.1, 0.05);
    expect(cap.reserve(0.04)).toBe(true);
    cap.settle(0.04, 0.039);
    expect(cap.spentUsd).toBeCloseTo(0.089, 12);
    expect(cap.reserve(0.04)).toBe(false);
  });

  it('an unpriced estimate never fits; a cap must be positive', () => {
    expect(new CostCap(100).reserve(null)).toBe(false);
    expect(() => new CostCap(0)).toThrow(RangeError);
  });
});

describe('attemptCostOf', () => {
  it('prices an answer by its usage, a timeout at one image (possibly billed), anything else at nothing', () => {
    expect(attemptCostOf(pricing, request, { usage: { promptTokens: 1_000_000, imageCount: 1 }, answered: true, timedOut: false })).toEqual({ model: 'm', usd: 1.04, possiblyBilledUsd: 0 });
    expect(attemptCostOf(pricing, request, { usage: { promptTokens: 0, imageCount: 0 }, answered: true, timedOut: false }).usd).toBe(0);
    const timeout = attemptCostOf(pricing, request, { usage: undefined, answered: false, timedOut: true });
    expect(timeout).toEqual({ model: 'm', usd: null, possiblyBilledUsd: 0.04 });
    expect(chargedUsd(timeout)).toBe(0.04);
    expect(attemptCostOf(pricing, request, { usage: undefined, answered: false, timedOut: false })).toEqual({ model: 'm', usd: null, possiblyBilledUsd: 0 });
    // An image that arrived without usage is priced at the estimate.
    expect(attemptCostOf(pricing, request, { usage: undefined, answered: true, timedOut: false }).usd).toBe(0.04);
  });
});

describe('the cost cap in the job and the ledger', () => {
  it('capCost stops new attempts without a failure class; a short stage says cost_cap', () => {
    const job = new JobControl('j', 3, 0);
    let halted = 0;
    job.halted$.subscribe(() => halted++);
    job.capCost();
    job.capCost();
    expect({ costCapped: job.costCapped, haltedBy: job.haltedBy, halted }).toEqual({ costCapped: true, haltedBy: null, halted: 1 });
    const ledger = new StageLedger(0, 3, { maxAttemptsPerSlot: 3, maxReplacementsPerStage: 3 }, freshStageState(3));
    ledger.initialRequests();
    ledger.start(0, 1);
    ledger.deliver(0, 'a');
    expect(ledger.shortfall(job)).toEqual({ count: 2, reason: 'cost_cap', errorClass: null });
  });

  it('a cancel and a non-retryable stop still name themselves first', () => {
    const ledger = new StageLedger(0, 2, { maxAttemptsPerSlot: 3, maxReplacementsPerStage: 3 }, freshStageState(2));
    expect(ledger.shortfall({ cancelled: true, haltedBy: 'cancelled', costCapped: true })?.reason).toBe('cancelled');
    expect(ledger.shortfall({ cancelled: false, haltedBy: 'auth', costCapped: true })?.reason).toBe('job_aborted');
  });
});
