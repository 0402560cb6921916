/**
 * The progress notifications that cross processes: derived from the domain events
 * (same field names), and checked on decode (a malformed payload is null, never an
 * unchecked cast). Pure: no database.
 */
import { describe, expect, it } from 'vitest';
import type { PipelineEvent } from '../../src/domain/events.js';
import { attemptFailedNotification, decodeJobEventsAppended, decodeNotification, encodeNotification, toNotifiedEvent, type NotifiedEvent } from '../../src/db/index.js';
import { encodeJobEventsAppended } from '../../src/db/notifications.js';
import type { AttemptFailedEvent } from '../../src/domain/events.js';

const jobId = 'job-n';

/** One engine event of each type `toNotifiedEvent` publishes. */
const EVENTS: readonly PipelineEvent[] = [
  { type: 'job:started', jobId, at: 0, totalImages: 4, deliveredImages: 1, stages: [{ index: 0, quantity: 4, delivered: 1 }] },
  { type: 'attempt:started', jobId, at: 1, stage: 0, slot: 2, attempt: 1 },
  { type: 'attempt:failed', jobId, at: 2, stage: 0, slot: 2, attempt: 1, errorClass: 'rate_limited', message: 'slow down', httpStatus: 429, latencyMs: 7, providerLatencyMs: 7, willRetry: true, delayMs: 1250.5 },
  {
    type: 'slot:delivered', jobId, at: 3, stage: 0, slot: 2, attempt: 2, attachId: 'a-1', latencyMs: 9, providerLatencyMs: 6, usage: null,
    stageProgress: { delivered: 2, total: 4 }, progress: { delivered: 2, total: 4 },
  },
  { type: 'stage:completed', jobId, at: 4, stage: 1, quantity: 2, delivered: 2 },
  { type: 'stage:short', jobId, at: 5, stage: 0, quantity: 4, delivered: 3, missing: 1, reason: 'budget_exhausted', errorClass: null },
];

const finished: NotifiedEvent = { type: 'job:finished', jobId, status: 'partial', result: { totalImages: 6, deliveredImages: 5 } };
const cancel: NotifiedEvent = { type: 'job:cancel-requested', jobId };

describe('toNotifiedEvent', () => {
  it('keeps the domain field names and drops what must not cross processes (at, latency, usage, per-stage list)', () => {
    expect(EVENTS.map(toNotifiedEvent)).toEqual([
      { type: 'job:started', jobId, totalImages: 4, deliveredImages: 1 },
      { type: 'attempt:started', jobId, stage: 0, slot: 2, attempt: 1 },
      { type: 'attempt:failed', jobId, stage: 0, slot: 2, attempt: 1, errorClass: 'rate_limited', httpStatus: 429, message: 'slow down', willRetry: true, delayMs: 1250.5 },
      { type: 'slot:delivered', jobId, stage: 0, slot: 2, attempt: 2, attachId: 'a-1', stageProgress: { delivered: 2, total: 4 }, progress: { delivered: 2, total: 4 } },
      { type: 'stage:completed', jobId, stage: 1, quantity: 2, delivered: 2 },
      { type: 'stage:short', jobId, stage: 0, quantity: 4, delivered: 3, reason: 'budget_exhausted', errorClass: null },
    ]);
  });
});

describe('decodeNotification', () => {
  it('gives back every notification it is handed encoded', () => {
    const all = [...EVENTS.map((e) => toNotifiedEvent(e) as NotifiedEvent), finished, cancel];
    for (const event of all) expect(decodeNotification(encodeNotification(event)), event.type).toEqual(event);
  });

  it('keeps only the fields of the type (a newer publisher may add some)', () => {
    expect(decodeNotification(JSON.stringify({ ...cancel, extra: 'x', at: 5 }))).toEqual(cancel);
  });

  it.each([
    ['not JSON', '{"type":'],
    ['JSON but not an object', '[1,2]'],
    ['null', 'null'],
    ['an unknown type', JSON.stringify({ type: 'job:exploded', jobId })],
    ['no type', JSON.stringify({ jobId })],
    ['no jobId', JSON.stringify({ type: 'job:cancel-requested' })],
    ['the old flat slot:delivered', JSON.stringify({ type: 'slot:delivered', jobId, stage: 0, slot: 0, attempt: 1, attachId: 'a', stageDelivered: 1, stageTotal: 2, delivered: 1, total: 2 })],
    ['a count that is not a count', JSON.stringify({ ...finished, result: { totalImages: 6, deliveredImages: -1 } })],
    ['a string where a number belongs', JSON.stringify({ type: 'attempt:started', jobId, stage: '0', slot: 0, attempt: 1 })],
    ['an unknown error class', JSON.stringify({ ...toNotifiedEvent(EVENTS[2] as PipelineEvent), errorClass: 'gremlins' })],
    ['an unknown shortfall reason', JSON.stringify({ ...toNotifiedEvent(EVENTS[5] as PipelineEvent), reason: 'bad_luck' })],
    ['a status that is not how a job ends', JSON.stringify({ ...finished, status: 'running' })],
    ['progress without total', JSON.stringify({ ...toNotifiedEvent(EVENTS[3] as PipelineEvent), progress: { delivered: 2 } })],
  ])('is null for %s', (_what, payload) => {
    expect(decodeNotification(payload)).toBeNull();
  });
});

describe('attemptFailedNotification', () => {
  it('is what toNotifiedEvent publishes for a failure (the attempt log logs the same event), message cut to 300 characters', () => {
    const failed = { ...(EVENTS[2] as AttemptFailedEvent), message: 'm'.repeat(1000) };
    expect(attemptFailedNotification(failed)).toEqual(toNotifiedEvent(failed));
    expect(attemptFailedNotification(failed).message).toHaveLength(300);
  });
});

describe('the job events channel payload', () => {
  it('round-trips { jobId, seq } and nothing else', () => {
    expect(decodeJobEventsAppended(encodeJobEventsAppended({ jobId, seq: 12 }))).toEqual({ jobId, seq: 12 });
    expect(decodeJobEventsAppended(JSON.stringify({ jobId, seq: 3, extra: true }))).toEqual({ jobId, seq: 3 });
  });

  it.each([
    ['not JSON', 'x'],
    ['no seq', JSON.stringify({ jobId })],
    ['a negative seq', JSON.stringify({ jobId, seq: -1 })],
    ['a fractional seq', JSON.stringify({ jobId, seq: 1.5 })],
    ['no jobId', JSON.stringify({ seq: 1 })],
    ['an array', '[1]'],
  ])('is null for %s', (_what, payload) => {
    expect(decodeJobEventsAppended(payload)).toBeNull();
  });
});
