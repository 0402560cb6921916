import { map } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { PipelineError } from '../src/domain/error-class.js';
import type { PipelineEvent } from '../src/domain/events.js';
import type { Delivery } from '../src/domain/ports.js';
import { runEngine } from '../src/streams/engine.js';
import { newScheduler, scriptedPorts, stages, virtualOptions } from './support.js';

/** `[slot, latencyMs, providerLatencyMs]` of each attempt's end, as the events say it. */
function latencies(events: readonly PipelineEvent[]) {
  return events.flatMap((e) => (e.type === 'attempt:failed' || e.type === 'slot:delivered' ? [[e.type, e.slot, e.latencyMs, e.providerLatencyMs] as const] : []));
}

describe('events split an attempt\'s latency: the provider call, then the delivery', () => {
  it('an image at 3 delivered at 5; a provider error at 2; an image at 3 whose delivery fails at 7; a call that times out at 10', () => {
    const scheduler = newScheduler();
    const events: PipelineEvent[] = [];
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(
        helpers,
        (r) => [{ marble: '---i|' }, { marble: '--#', error: 'overloaded' as const }, { marble: '---i|' }, { marble: '-' }][r.slotIndex]!,
        (r) =>
          r.slotIndex === 2
            ? helpers.cold<Delivery>('----#', undefined, new PipelineError('storage', 'upload refused'))
            : helpers.cold('--a|', { a: null }).pipe(map((): Delivery => ({ attachId: `a${r.slotIndex}`, duplicate: false }))),
      );
      //            slot 0   ---i--d            provider 3, delivery 2
      //            slot 1   --#                provider 2 (the error is its answer)
      //            slot 2   ---i----#          provider 3, then the delivery fails
      //            slot 3   ----------T        the timeout ends the call at 10
      scheduler.schedule(() =>
        runEngine({ jobId: 'j', stages: stages(4) }, ports, { ...virtualOptions(scheduler), attemptTimeoutMs: 10, maxAttemptsPerSlot: 1 }).subscribe((e) => events.push(e)),
      );
    });
    expect(latencies(events)).toEqual([
      ['attempt:failed', 1, 2, 2],
      ['slot:delivered', 0, 5, 3],
      ['attempt:failed', 2, 7, 3],
      ['attempt:failed', 3, 10, 10],
    ]);
  });

  it('an attempt aborted by a cancel has no provider latency (null): its call never answered', () => {
    const scheduler = newScheduler();
    const events: PipelineEvent[] = [];
    scheduler.run((helpers) => {
      const { ports } = scriptedPorts(helpers, () => ({ marble: '------i|' }));
      const cancel$ = helpers.hot('--x');
      scheduler.schedule(() => runEngine({ jobId: 'j', stages: stages(1) }, ports, { ...virtualOptions(scheduler), cancel$ }).subscribe((e) => events.push(e)));
    });
    expect(latencies(events)).toEqual([['attempt:failed', 0, 2, null]]);
  });
});
