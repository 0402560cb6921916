/**
 * `loadConfig` (src/config.ts): the image generator it chooses and configures: the
 * provider choice (`IMAGEGEN_PROVIDER`, `GEMINI_API_KEY`, `--provider`), the Gemini
 * settings and the offline generator's fault injection (`IMAGEGEN_OFFLINE_*`).
 *
 * Unit tests, no I/O: the environment is an object passed in, never `process.env`.
 */
import { describe, expect, it } from 'vitest';
import { DEFAULT_OFFLINE_FAILURE_CLASSES, OfflineImageGenerator } from '../src/adapters/offline-image-generator.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { ERROR_CLASSES, isRetryable } from '../src/domain/error-class.js';
import { refusal, type Env } from './support/config-refusal.js';


describe('loadConfig: provider choice', () => {
  it('gemini with a key, offline without one (an empty key is none)', () => {
    expect(loadConfig({ GEMINI_API_KEY: 'k' }).provider).toBe('gemini');
    expect(loadConfig({ GEMINI_API_KEY: 'k' }).gemini.apiKey).toBe('k');
    expect(loadConfig({}).provider).toBe('offline');
    expect(loadConfig({ GEMINI_API_KEY: '' }).provider).toBe('offline');
  });

  it('gemini without a key is a ConfigError naming GEMINI_API_KEY, from the variable or the flag', () => {
    for (const [env, overrides] of [
      [{ IMAGEGEN_PROVIDER: 'gemini' }, {}],
      [{}, { provider: 'gemini' }],
      [{ IMAGEGEN_PROVIDER: 'gemini', GEMINI_API_KEY: '' }, {}],
    ] as const) {
      const error = refusal(env, overrides);
      expect(error?.variable).toBe('GEMINI_API_KEY');
      expect(error?.message).toContain('required');
    }
  });

  it('GEMINI_MODEL, GEMINI_BASE_URL and GEMINI_TIMEOUT_MS are read', () => {
    const { gemini } = loadConfig({ GEMINI_API_KEY: 'k', GEMINI_MODEL: 'm', GEMINI_BASE_URL: 'http://127.0.0.1:1', GEMINI_TIMEOUT_MS: '5' });
    expect([gemini.model, gemini.baseUrl, gemini.timeoutMs]).toEqual(['m', 'http://127.0.0.1:1', 5]);
  });
});

describe('loadConfig: IMAGEGEN_OFFLINE_*', () => {
  const config = loadConfig({});

  it('"transient mix": without IMAGEGEN_OFFLINE_FAILURE_CLASSES the offline generator injects retryable classes only', () => {
    const generator = new OfflineImageGenerator({ failureRate: 1, ...(config.offline.failureClasses ? { failureClasses: config.offline.failureClasses } : {}) });
    expect(generator.config.failureClasses).toEqual(DEFAULT_OFFLINE_FAILURE_CLASSES);
    expect(DEFAULT_OFFLINE_FAILURE_CLASSES.length).toBeGreaterThan(1);
    for (const errorClass of DEFAULT_OFFLINE_FAILURE_CLASSES) expect(isRetryable(errorClass), errorClass).toBe(true);
    // Every injected failure is drawn from the mix.
    const planned = new Set(Array.from({ length: 200 }, (_, i) => generator.plannedFailure({ jobId: 'j', stageIndex: 0, slotIndex: i, attempt: 1 })));
    for (const errorClass of planned) expect(DEFAULT_OFFLINE_FAILURE_CLASSES).toContain(errorClass);
  });

  it('reads rate, latency, jitter, seed and a comma list of classes (spaces trimmed)', () => {
    const { offline } = loadConfig({
      IMAGEGEN_OFFLINE_FAILURE_RATE: '0.25',
      IMAGEGEN_OFFLINE_LATENCY_MS: '7',
      IMAGEGEN_OFFLINE_JITTER_MS: '3',
      IMAGEGEN_OFFLINE_SEED: '-42',
      IMAGEGEN_OFFLINE_FAILURE_CLASSES: 'rate_limited, overloaded ,prompt_blocked',
    });
    expect({ ...offline }).toEqual({ failureRate: 0.25, latencyMs: 7, jitterMs: 3, seed: -42, failureClasses: ['rate_limited', 'overloaded', 'prompt_blocked'] });
  });

  it('every known class is accepted; an unknown one is refused naming it and listing the known ones', () => {
    expect(loadConfig({ IMAGEGEN_OFFLINE_FAILURE_CLASSES: ERROR_CLASSES.join(',') }).offline.failureClasses).toEqual([...ERROR_CLASSES]);
    const error = refusal({ IMAGEGEN_OFFLINE_FAILURE_CLASSES: 'overloaded,Overloaded' });
    expect(error?.variable).toBe('IMAGEGEN_OFFLINE_FAILURE_CLASSES');
    expect(error?.message).toContain('unknown class Overloaded');
    for (const known of ERROR_CLASSES) expect(error?.message).toContain(known);
    // A trailing comma is an empty (unknown) class, not silently dropped.
    expect(refusal({ IMAGEGEN_OFFLINE_FAILURE_CLASSES: 'overloaded,' })?.variable).toBe('IMAGEGEN_OFFLINE_FAILURE_CLASSES');
  });

  it('the configured classes are the ones the offline generator injects', () => {
    const { offline } = loadConfig({ IMAGEGEN_OFFLINE_FAILURE_RATE: '1', IMAGEGEN_OFFLINE_FAILURE_CLASSES: 'prompt_blocked' });
    const generator = new OfflineImageGenerator({ failureRate: offline.failureRate, ...(offline.failureClasses ? { failureClasses: offline.failureClasses } : {}) });
    for (let slot = 0; slot < 20; slot++) expect(generator.plannedFailure({ jobId: 'j', stageIndex: 0, slotIndex: slot, attempt: 1 })).toBe('prompt_blocked');
  });
});
