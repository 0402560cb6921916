/** `IMAGEGEN_WEBHOOK_*`: the dispatcher's defaults from their owner, the values read, and what is refused. */
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { DEFAULT_WEBHOOK_OPTIONS } from '../src/sinks/webhook-dispatcher.js';
import { refusal } from './support/config-refusal.js';

describe('loadConfig: webhooks', () => {
  it('defaults: 10 s timeout, retried for 24 h, backoff 5 s doubling to 1 h, a 1 s poll, 8 sends at once, https to public addresses only', () => {
    expect(loadConfig({}).webhooks).toEqual({
      timeoutMs: 10_000,
      retryWindowMs: 24 * 3600 * 1000,
      backoffBaseMs: 5000,
      backoffMaxMs: 3_600_000,
      pollMs: 1000,
      concurrency: 8,
      allowLocal: false,
    });
    expect(DEFAULT_WEBHOOK_OPTIONS).toMatchObject({ timeoutMs: 10_000, retryWindowMs: 86_400_000, backoffBaseMs: 5000, backoffMaxMs: 3_600_000, pollMs: 1000, concurrency: 8 });
  });

  it('reads every variable', () => {
    expect(
      loadConfig({
        IMAGEGEN_WEBHOOK_TIMEOUT_MS: '500',
        IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS: '3',
        IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS: '20',
        IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS: '200',
        IMAGEGEN_WEBHOOK_POLL_MS: '100',
        IMAGEGEN_WEBHOOK_CONCURRENCY: '2',
        IMAGEGEN_WEBHOOK_ALLOW_LOCAL: '1',
      }).webhooks,
    ).toEqual({ timeoutMs: 500, retryWindowMs: 3000, backoffBaseMs: 20, backoffMaxMs: 200, pollMs: 100, concurrency: 2, allowLocal: true });
  });

  it.each([
    ['IMAGEGEN_WEBHOOK_TIMEOUT_MS', '0'],
    ['IMAGEGEN_WEBHOOK_TIMEOUT_MS', '120001'],
    ['IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS', '0'],
    ['IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS', '2592001'],
    ['IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS', 'soon'],
    ['IMAGEGEN_WEBHOOK_POLL_MS', '5'],
    ['IMAGEGEN_WEBHOOK_CONCURRENCY', '0'],
    ['IMAGEGEN_WEBHOOK_ALLOW_LOCAL', 'maybe'],
  ])('refuses %s=%s, naming it', (name, value) => {
    expect(refusal({ [name]: value })?.variable).toBe(name);
  });

  it('refuses a backoff ceiling below its base', () => {
    expect(refusal({ IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS: '500', IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS: '100' })?.rule).toBe('must be at least IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS (500), got 100');
    // A base above the default ceiling raises the ceiling with it.
    expect(loadConfig({ IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS: '7200000' }).webhooks.backoffMaxMs).toBe(7_200_000);
  });
});
