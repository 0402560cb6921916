import { describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import type { AttemptRequest } from '../../src/domain/ports.js';
import { attemptFailed, attemptStarted, slotDelivered, stageEnded } from '../../src/engine/attempt-events.js';

const request: AttemptRequest = { jobId: 'j', stageIndex: 1, slotIndex: 2, attempt: 3, prompt: 'p', aspectRatio: '16:9', inputAttachId: null };

describe('attempt events: one factory per fact', () => {
  it('attempt:started names the attempt', () => {
    expect(attemptStarted(request, 7)).toEqual({ type: 'attempt:started', jobId: 'j', at: 7, stage: 1, slot: 2, attempt: 3 });
  });

  it('attempt:failed with a replacement says when; without one, willRetry false and delay 0', () => {
    const error = new PipelineError('rate_limited', 'HTTP 429', { httpStatus: 429 });
    expect(attemptFailed(request, 9, { error, latencyMs: 4, providerLatencyMs: 3, retryInMs: 250 })).toEqual({
      type: 'attempt:failed',
      jobId: 'j',
      at: 9,
      stage: 1,
      slot: 2,
      attempt: 3,
      errorClass: 'rate_limited',
      message: 'HTTP 429',
      httpStatus: 429,
      latencyMs: 4,
      providerLatencyMs: 3,
      willRetry: true,
      delayMs: 250,
    });
    const cancelled = attemptFailed(request, 9, { error: new PipelineError('cancelled', 'the job was cancelled'), latencyMs: 4, providerLatencyMs: null, retryInMs: null });
    expect([cancelled.errorClass, cancelled.httpStatus, cancelled.willRetry, cancelled.delayMs, cancelled.providerLatencyMs]).toEqual(['cancelled', null, false, 0, null]);
  });

  it('a retry after 0 ms is still a retry', () => {
    expect(attemptFailed(request, 0, { error: new PipelineError('network', 'x'), latencyMs: 0, providerLatencyMs: 0, retryInMs: 0 }).willRetry).toBe(true);
  });

  it('slot:delivered carries the attach id, the provider\'s part of the latency and both progress counts', () => {
    const delivered = { attachId: 'a', latencyMs: 5, providerLatencyMs: 2, usage: null, stageProgress: { delivered: 1, total: 2 }, progress: { delivered: 3, total: 4 } };
    expect(slotDelivered(request, 11, delivered)).toEqual({ type: 'slot:delivered', jobId: 'j', at: 11, stage: 1, slot: 2, attempt: 3, ...delivered });
  });

  it('a stage ends completed when it holds its quantity, else short with the reason', () => {
    expect(stageEnded('j', 1, { index: 0, quantity: 2, delivered: 2, attachIds: ['a', 'b'], shortfall: null })).toEqual({
      type: 'stage:completed',
      jobId: 'j',
      at: 1,
      stage: 0,
      quantity: 2,
      delivered: 2,
    });
    const shortfall = { count: 1, reason: 'non_retryable', errorClass: 'prompt_blocked' } as const;
    expect(stageEnded('j', 1, { index: 0, quantity: 2, delivered: 1, attachIds: ['a'], shortfall })).toEqual({
      type: 'stage:short',
      jobId: 'j',
      at: 1,
      stage: 0,
      quantity: 2,
      delivered: 1,
      missing: 1,
      reason: 'non_retryable',
      errorClass: 'prompt_blocked',
    });
  });
});
