import { describe, expect, it } from 'vitest';
import { ERROR_CLASSES } from '../../src/domain/error-class.js';
import { haltsJob } from '../../src/engine/halts-job.js';
import { JobControl } from '../../src/engine/job-control.js';

describe('JobControl: what the stages of a job share', () => {
  it('counts deliveries from what was delivered before, and returns the progress after each', () => {
    const job = new JobControl('j', 5, 2);
    expect(job.recordDelivery()).toEqual({ delivered: 3, total: 5 });
    expect(job.recordDelivery()).toEqual({ delivered: 4, total: 5 });
    expect(job.delivered).toBe(4);
  });

  it('the delivered count is read-only from outside', () => {
    const job = new JobControl('j', 5, 0);
    // @ts-expect-error: only recordDelivery() counts
    expect(() => (job.delivered = 3)).toThrow(TypeError);
    expect(job.delivered).toBe(0);
  });

  it('exactly auth and quota_exhausted halt the job', () => {
    expect(ERROR_CLASSES.filter(haltsJob)).toEqual(['auth', 'quota_exhausted']);
    for (const errorClass of ERROR_CLASSES) {
      const job = new JobControl('j', 1, 0);
      job.recordFailure(errorClass);
      expect(job.haltedBy).toBe(haltsJob(errorClass) ? errorClass : null);
    }
  });

  it('the first halt wins, halted$ emits once and replays to late subscribers', () => {
    const job = new JobControl('j', 1, 0);
    let early = 0;
    job.halted$.subscribe(() => early++);
    job.recordFailure('auth');
    job.halt('quota_exhausted');
    let late = 0;
    job.halted$.subscribe(() => late++);
    expect([job.haltedBy, early, late]).toEqual(['auth', 1, 1]);
  });

  it('cancel marks the job cancelled and halts it with cancelled, unless it was already halted', () => {
    const fresh = new JobControl('j', 1, 0);
    fresh.cancel();
    expect([fresh.cancelled, fresh.haltedBy]).toEqual([true, 'cancelled']);
    const halted = new JobControl('j', 1, 0);
    halted.halt('auth');
    halted.cancel();
    expect([halted.cancelled, halted.haltedBy]).toEqual([true, 'auth']);
  });
});
