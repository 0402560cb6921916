/**
 * What a request waiting for its stage's permit holds: its place in the queue, no
 * subscription to the halt. Every unfilled slot of a stage waits there from the start, so
 * what each one holds is multiplied by the stage's quantity (a 5,000-image job held 67 MiB
 * of heap in those subscriptions before; BENCHMARKS.md 11C). A halt still drops every
 * queued request, unsent, in the turn the running ones end.
 */
import { NEVER, Observable, Subject, asyncScheduler, lastValueFrom, merge, of, toArray, type Subscriber } from 'rxjs';
import { describe, expect, it } from 'vitest';
import type { AttemptRequest, Delivery, EnginePorts, GeneratedImage } from '../../src/domain/ports.js';
import { AdaptiveConcurrencyLimiter } from '../../src/engine/adaptive-concurrency-limiter.js';
import { ConcurrencyLimiter } from '../../src/engine/concurrency-limiter.js';
import { runAttempt, type AttemptItem } from '../../src/operators/run-attempt.js';

const QUANTITY = 1000;
const IMAGE: GeneratedImage = { bytes: new Uint8Array([1]), mimeType: 'image/png' };

function request(slotIndex: number): AttemptRequest {
  return { jobId: 'j', stageIndex: 0, slotIndex, attempt: 1, prompt: 'p', aspectRatio: '1:1', inputAttachId: 'in' } as unknown as AttemptRequest;
}

/** A halt signal that counts its live subscriptions. */
function countedHalt() {
  const halt = new Subject<void>();
  let live = 0;
  let most = 0;
  const halt$ = new Observable<void>((subscriber: Subscriber<void>) => {
    live++;
    most = Math.max(most, live);
    const inner = halt.subscribe(subscriber);
    return () => {
      live--;
      inner.unsubscribe();
    };
  });
  return { halt, halt$, live: () => live, most: () => most };
}

describe('runAttempt: a request queued for the stage permit', () => {
  it(`${QUANTITY} queued requests hold no subscription to the halt; the halt drops them all, unsent, when the running one ends`, async () => {
    const stageLimiter = new ConcurrencyLimiter(1);
    const globalLimiter = new AdaptiveConcurrencyLimiter({ max: 4 });
    const answer = new Subject<GeneratedImage>();
    const generated: number[] = [];
    const ports = {
      generate: (r: AttemptRequest) => {
        generated.push(r.slotIndex);
        return generated.length === 1 ? answer : NEVER;
      },
      deliver: (r: AttemptRequest): Observable<Delivery> => of({ attachId: `a${r.slotIndex}` } as Delivery),
    } as unknown as EnginePorts;
    const halt = countedHalt();
    let stopped = false;
    // Real time: nothing here waits on a timer (the attempt timeout is a minute away, never reached).
    const config = { ports, attemptTimeoutMs: 60_000, stageLimiter, globalLimiter, share: { userId: 'u', jobId: 'j', priority: 0 }, scheduler: asyncScheduler, halt$: halt.halt$, halted: () => stopped };
    const all = merge(...Array.from({ length: QUANTITY }, (_, i) => runAttempt(request(i), config)));
    const items = lastValueFrom(all.pipe(toArray()));
    await Promise.resolve();

    // One request runs (it raced the halt until it was sent, then left the race); the rest wait, holding nothing else.
    expect(generated).toEqual([0]);
    expect(stageLimiter.waiting).toBe(QUANTITY - 1);
    expect(halt.live()).toBe(0);
    expect(halt.most()).toBe(1);

    stopped = true;
    halt.halt.next();
    // The running one is already sent: the halt does not drop it; it delivers, then the queue empties.
    answer.next(IMAGE);
    answer.complete();
    const ended = (await items) as AttemptItem[];
    expect(ended.filter((item) => item.kind === 'delivered')).toHaveLength(1);
    expect(ended.filter((item) => item.kind === 'dropped')).toHaveLength(QUANTITY - 1);
    expect(generated).toEqual([0]);
    expect(halt.most()).toBe(1);
    expect(halt.live()).toBe(0);
    expect(stageLimiter.waiting).toBe(0);
  });
});
