/**
 * `writeEventStream` against a sink that behaves like a `ServerResponse` (its `write` says
 * when the socket is full, it emits `drain` and `close`), in virtual time: the heartbeat
 * and the drain timeout run on a `VirtualTimeScheduler` the test advances.
 */
import { EventEmitter } from 'node:events';
import { Observable, Subject, VirtualTimeScheduler } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { sseFrame, writeEventStream, type SseEnding, type SseEnvelope, type SseSink } from '../../src/sinks/sse-stream.js';

type Event = { readonly type: string; readonly n?: number };

class FakeSink extends EventEmitter implements SseSink {
  readonly chunks: string[] = [];
  /** What the next writes answer: false = the socket's buffer is full. */
  accepting = true;
  writableEnded = false;
  destroyed = false;
  write(chunk: string): boolean {
    this.chunks.push(chunk);
    return this.accepting;
  }
  end(): void {
    this.writableEnded = true;
  }
  destroy(): void {
    this.destroyed = true;
  }
  drain(): void {
    this.accepting = true;
    this.emit('drain');
  }
}

/** A source the test drives: each follow is recorded with its `afterSeq`, and its subject stays reachable. */
function source() {
  const follows: { afterSeq: number; events: Subject<SseEnvelope<Event>>; unsubscribed: boolean }[] = [];
  const follow = (afterSeq: number) =>
    new Observable<SseEnvelope<Event>>((subscriber) => {
      const events = new Subject<SseEnvelope<Event>>();
      const entry = { afterSeq, events, unsubscribed: false };
      follows.push(entry);
      const subscription = events.subscribe(subscriber);
      return () => {
        entry.unsubscribed = true;
        subscription.unsubscribe();
      };
    });
  const current = () => follows.at(-1) as (typeof follows)[number];
  const emit = (seq: number, type = 'slot:delivered') => current().events.next({ seq, event: { type, n: seq } });
  return { follows, follow, current, emit };
}

function setup(options: { snapshot?: boolean; types?: ReadonlySet<string> } = {}) {
  const scheduler = new VirtualTimeScheduler();
  const advanceTo = (ms: number) => {
    scheduler.maxFrames = ms;
    scheduler.flush();
  };
  const sink = new FakeSink();
  const src = source();
  const endings: SseEnding[] = [];
  let completed = false;
  const subscription = writeEventStream(sink, src.follow, {
    afterSeq: 3,
    snapshot: options.snapshot ? { seq: 3, data: { status: 'running' } } : undefined,
    types: options.types,
    heartbeatMs: 1000,
    drainTimeoutMs: 5000,
    scheduler,
  }).subscribe({ next: (e) => endings.push(e), complete: () => (completed = true) });
  return { scheduler, advanceTo, sink, src, endings, subscription, isCompleted: () => completed };
}

describe('writeEventStream', () => {
  it('writes the snapshot, then each event as a frame, and ends the response when the source completes', () => {
    const { sink, src, endings, isCompleted } = setup({ snapshot: true });
    expect(src.follows.map((f) => f.afterSeq)).toEqual([3]);
    src.emit(4);
    src.emit(5, 'job:finished');
    src.current().events.complete();
    expect(sink.chunks).toEqual([sseFrame('snapshot', 3, { status: 'running' }), sseFrame('slot:delivered', 4, { type: 'slot:delivered', n: 4 }), sseFrame('job:finished', 5, { type: 'job:finished', n: 5 })]);
    expect(sink.chunks[1]).toBe('event: slot:delivered\nid: 4\ndata: {"type":"slot:delivered","n":4}\n\n');
    expect(sink.writableEnded).toBe(true);
    expect(endings).toEqual([{ reason: 'finished' }]);
    expect(isCompleted()).toBe(true);
  });

  it('skips event types not asked for, but moves its position past them', () => {
    const { sink, src } = setup({ types: new Set(['slot:delivered']) });
    src.emit(4, 'job:cancel-requested');
    sink.accepting = false;
    src.emit(5);
    sink.drain();
    expect(sink.chunks).toEqual([sseFrame('slot:delivered', 5, { type: 'slot:delivered', n: 5 })]);
    expect(src.follows.map((f) => f.afterSeq)).toEqual([3, 5]);
  });

  it('stops reading the source while the socket is full and follows again after the last event written once it drains', () => {
    const { sink, src, endings } = setup();
    src.emit(4);
    sink.accepting = false;
    src.emit(5);
    // The frame of 5 went into the full buffer; the source is let go at once.
    expect(src.current().unsubscribed).toBe(true);
    expect(src.current().events.observed).toBe(false);
    sink.drain();
    expect(src.follows.map((f) => f.afterSeq)).toEqual([3, 5]);
    src.emit(6);
    expect(sink.chunks.map((c) => c.split('\n')[1])).toEqual(['id: 4', 'id: 5', 'id: 6']);
    expect(endings).toEqual([]);
  });

  it('ignores what a source still emits synchronously after it filled the socket (no event is buffered)', () => {
    const sink = new FakeSink();
    sink.accepting = false;
    let subscribed = 0;
    let unsubscribed = 0;
    const follow = (afterSeq: number) =>
      new Observable<SseEnvelope<Event>>((subscriber) => {
        subscribed++;
        for (let seq = afterSeq + 1; seq <= afterSeq + 3 && !subscriber.closed; seq++) subscriber.next({ seq, event: { type: 'slot:delivered' } });
        return () => unsubscribed++;
      });
    writeEventStream(sink, follow, { afterSeq: 0, heartbeatMs: 1000, drainTimeoutMs: 5000, scheduler: new VirtualTimeScheduler() }).subscribe();
    expect(sink.chunks.map((c) => c.split('\n')[1])).toEqual(['id: 1']);
    expect([subscribed, unsubscribed]).toEqual([1, 1]);
    // Followed again after 1 once drained: 2, 3, 4 now fit.
    sink.drain();
    expect(sink.chunks.map((c) => c.split('\n')[1])).toEqual(['id: 1', 'id: 2', 'id: 3', 'id: 4']);
    expect([subscribed, unsubscribed]).toEqual([2, 1]);
  });

  it('drops a client that does not drain within the timeout (it resumes with Last-Event-ID)', () => {
    const { sink, src, endings, advanceTo } = setup();
    sink.accepting = false;
    src.emit(4);
    advanceTo(4999);
    expect(endings).toEqual([]);
    advanceTo(5000);
    expect(endings).toEqual([{ reason: 'dropped' }]);
    expect(sink.destroyed).toBe(true);
    sink.drain();
    expect(src.follows).toHaveLength(1);
  });

  it('writes a ping comment every heartbeat, none while the socket is full', () => {
    const { sink, advanceTo } = setup();
    advanceTo(2000);
    expect(sink.chunks).toEqual([': ping\n\n', ': ping\n\n']);
    sink.accepting = false;
    advanceTo(3000);
    // The third ping filled the socket: no more until it drains.
    advanceTo(4500);
    expect(sink.chunks).toHaveLength(3);
    sink.drain();
    advanceTo(5000);
    expect(sink.chunks).toHaveLength(4);
  });

  it('stops everything when the client goes away', () => {
    const { sink, src, endings, advanceTo } = setup();
    sink.emit('close');
    expect(endings).toEqual([{ reason: 'closed' }]);
    expect(src.current().unsubscribed).toBe(true);
    advanceTo(10_000);
    expect(sink.chunks).toEqual([]);
  });

  it('reports a source error as failed and ends the response', () => {
    const { sink, src, endings } = setup();
    const error = new Error('database gone');
    src.current().events.error(error);
    expect(endings).toEqual([{ reason: 'failed', error }]);
    expect(sink.writableEnded).toBe(true);
  });

  it('ends the response and lets the source go when unsubscribed (server shutdown), reporting nothing', () => {
    const { sink, src, endings, subscription } = setup();
    subscription.unsubscribe();
    expect(sink.writableEnded).toBe(true);
    expect(src.current().unsubscribed).toBe(true);
    expect(endings).toEqual([]);
  });
});
