import { EMPTY, of } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { JobFinishedEvent, PipelineEvent } from '../src/domain/events.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, simulate, stages, timeline, virtualOptions } from './support.js';

describe('rule 9 (more): cancellation across stages and before the start', () => {
  it('every stage reports its own in-flight attempts as cancelled', () => {
    const { lines } = simulate({
      quantities: [1, 1],
      script: () => ({ marble: '------i|' }),
      options: (scheduler, helpers) => ({ ...virtualOptions(scheduler), cancel$: helpers.hot('--x') }),
    });
    expect(lines.filter((l) => l.startsWith('2 '))).toEqual([
      '2 fail 0.0#1 cancelled',
      '2 stage 0 short 1 cancelled cancelled',
      '2 fail 1.0#1 cancelled',
      '2 stage 1 short 1 cancelled cancelled',
      '2 job cancelled []',
      '2 |',
    ]);
  });

  it('an already-cancelled signal makes no provider call at all', () => {
    const { lines, calls } = simulate({
      quantities: [3],
      script: () => ({ marble: '-i|' }),
      options: (scheduler) => ({ ...virtualOptions(scheduler), cancel$: of(true) }),
    });
    expect(calls).toEqual([]);
    expect(lines).toEqual(['0 job:started 0/3', '0 stage 0 short 3 cancelled cancelled', '0 job cancelled []', '0 |']);
  });
});

describe('rule 10: typed events, monotone progress, job:finished last and once', () => {
  it('tells the whole story of a job with failures, in order, with a result per stage', () => {
    const scheduler = newScheduler();
    const events: PipelineEvent[] = [];
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(helpers, (r) => {
        if (r.stageIndex === 0 && r.slotIndex === 1 && r.attempt === 1) return { marble: '-#', error: 'no_image' };
        if (r.stageIndex === 1 && r.slotIndex === 0) return { marble: '--#', error: 'safety_blocked' };
        return { marble: '--i|' };
      });
      scheduler.schedule(() =>
        runEngine({ jobId: 'job-x', stages: stages(2, 2) }, ports, { ...virtualOptions(scheduler), maxAttemptsPerSlot: 2 }).subscribe((e) =>
          events.push(e),
        ),
      );
    });
    expect(events[0]?.type).toBe('job:started');
    expect(events.filter((e) => e.type === 'job:finished')).toHaveLength(1);
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.type).toBe('job:finished');
    const progress = events.flatMap((e) => (e.type === 'slot:delivered' ? [e.progress.delivered] : []));
    expect(progress).toEqual([1, 2, 3]);
    expect(events.every((e) => e.jobId === 'job-x')).toBe(true);
    const failed = events.filter((e) => e.type === 'attempt:failed');
    expect(failed.map((e) => e.type === 'attempt:failed' && [e.stage, e.slot, e.attempt, e.errorClass, e.willRetry, e.delayMs])).toEqual([
      [0, 1, 1, 'no_image', true, 5],
      [1, 0, 1, 'safety_blocked', true, 5],
      [1, 0, 2, 'safety_blocked', false, 0],
    ]);
    expect(finished.result).toEqual({
      jobId: 'job-x',
      status: 'partial',
      totalImages: 4,
      deliveredImages: 3,
      attachIds: ['a00', 'a01', 'a11'],
      stages: [
        { index: 0, quantity: 2, delivered: 2, attachIds: ['a00', 'a01'], shortfall: null },
        { index: 1, quantity: 2, delivered: 1, attachIds: ['a11'], shortfall: { count: 1, reason: 'budget_exhausted', errorClass: 'safety_blocked' } },
      ],
    });
  });

  it('a port that throws synchronously or completes empty is a failed attempt, never a broken stream', () => {
    const scheduler = newScheduler();
    let lines: string[] = [];
    scheduler.run(() => {
      let n = 0;
      const ports = {
        generate: () => {
          n++;
          if (n === 1) throw new Error('adapter bug');
          if (n === 2) return EMPTY; // completes without an image
          return of({ bytes: new Uint8Array(1), mimeType: 'image/png' });
        },
        deliver: () => of({ attachId: 'a', duplicate: false }),
      };
      lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(1) }, ports, virtualOptions(scheduler)));
    });
    expect(lines).toEqual([
      '0 job:started 0/1',
      '0 start 0.0#1',
      '0 fail 0.0#1 network retry+5',
      '5 start 0.0#2',
      '5 fail 0.0#2 no_image retry+10',
      '15 start 0.0#3',
      '15 deliver 0.0#3 a 1/1',
      '15 stage 0 completed 1/1',
      '15 job completed [a]',
      '15 |',
    ]);
  });

  it('a failing delivery (storage or database) is a failed attempt of its class and is retried', () => {
    const scheduler = newScheduler();
    let lines: string[] = [];
    scheduler.run((helpers) => {
      let n = 0;
      const { ports } = scriptedPorts(
        helpers,
        () => ({ marble: '-i|' }),
        () => (++n === 1 ? helpers.cold('-#', undefined, Object.assign(new Error('s3 503'))) : of({ attachId: 'a', duplicate: false })),
      );
      lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(1) }, ports, virtualOptions(scheduler)));
    });
    expect(lines.filter((l) => / (fail|deliver) /.test(l))).toEqual(['2 fail 0.0#1 network retry+5', '8 deliver 0.0#2 a 1/1']);
  });
});

describe('rule 11: completed only when every stage holds exactly its quantity', () => {
  it('is partial when one stage is short and failed when nothing was delivered', () => {
    const run = (failStage: (stage: number) => boolean) => {
      const scheduler = newScheduler();
      let lines: string[] = [];
      scheduler.run((helpers) => {
        const { ports } = scriptedPorts(helpers, (r) => (failStage(r.stageIndex) ? { marble: '-#', error: 'invalid_request' } : { marble: '-i|' }));
        lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(2, 1) }, ports, virtualOptions(scheduler)));
      });
      return lines.at(-2);
    };
    expect(run((s) => s === 1)).toBe('1 job partial [a00,a01]');
    expect(run(() => true)).toBe('1 job failed []');
    expect(run(() => false)).toBe('1 job completed [a00,a01,a10]');
  });
});

describe('rule 9 (shutdown): stop$ stops new requests but lets in-flight attempts finish', () => {
  it('finishes the attempts in flight, starts nothing new, ends short with job_aborted', () => {
    const { lines, calls } = simulate({
      quantities: [4],
      script: () => ({ marble: '----i|' }),
      options: (scheduler, helpers) => ({ ...virtualOptions(scheduler), stageConcurrency: 2, stop$: helpers.hot('--x') }),
      inside: (helpers, subscriptions) => {
        // not aborted: both run to their image at 4
        helpers.expectSubscriptions(subscriptions('0.0#1')).toBe('^---!');
      },
    });
    expect(calls).toEqual(['0.0#1', '0.1#1']);
    expect(lines.slice(-5)).toEqual([
      '4 deliver 0.0#1 a00 1/4',
      '4 deliver 0.1#1 a01 2/4',
      '4 stage 0 short 2 job_aborted cancelled',
      '4 job partial [a00,a01]',
      '4 |',
    ]);
  });
});
