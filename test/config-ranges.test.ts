import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { refusal } from './support/config-refusal.js';

/** Node runs a timer above 2^31-1 ms after 1 ms: no duration setting may reach past it. */
const NODE_TIMER_LIMIT_MS = 2 ** 31 - 1;


describe('loadConfig: every duration setting has a range below the timer limit', () => {
  // [variable, largest accepted value]
  const DURATIONS: readonly [string, number][] = [
    ['GEMINI_TIMEOUT_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_ATTEMPT_TIMEOUT_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_BACKOFF_BASE_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_BACKOFF_MAX_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_OFFLINE_LATENCY_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_OFFLINE_JITTER_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_PROGRESS_INTERVAL_MS', NODE_TIMER_LIMIT_MS],
    ['IMAGEGEN_SHUTDOWN_GRACE_MS', NODE_TIMER_LIMIT_MS],
    // pg-boss refuses an expiry of 24 hours or more.
    ['IMAGEGEN_QUEUE_EXPIRE_SECONDS', 86_399],
    // A dead worker's job would wait this long: one hour at most.
    ['IMAGEGEN_LEASE_TTL_SECONDS', 3600],
  ];

  it.each(DURATIONS)('%s: %i is accepted, one more is refused naming the variable', (variable, max) => {
    expect(refusal({ [variable]: String(max) })).toBeNull();
    const error = refusal({ [variable]: String(max + 1) });
    expect(error?.variable).toBe(variable);
    expect(error?.message).toContain(`..${max}`);
  });

  it('IMAGEGEN_ATTEMPT_TIMEOUT_MS=3000000000 (the value in issue 9) is refused', () => {
    expect(refusal({ IMAGEGEN_ATTEMPT_TIMEOUT_MS: '3000000000' })?.variable).toBe('IMAGEGEN_ATTEMPT_TIMEOUT_MS');
  });

  it('every *_MS or *_SECONDS setting read by loadConfig is covered above', async () => {
    const { readFile } = await import('node:fs/promises');
    const source = await readFile(new URL('../src/config.ts', import.meta.url), 'utf8');
    const read = new Set([...source.matchAll(/'([A-Z0-9_]+_(?:MS|SECONDS))'/g)].map((m) => m[1]));
    // Settings other than those above (added meanwhile) must be bounded by the timer limit too.
    for (const variable of read) {
      if (variable === undefined || DURATIONS.some(([name]) => name === variable)) continue;
      expect(refusal({ [variable]: String(NODE_TIMER_LIMIT_MS + 1) })?.variable, variable).toBe(variable);
    }
    for (const [name] of DURATIONS) expect(read.has(name), name).toBe(true);
  });
});

describe('loadConfig: the metrics port (imagegen worker --metrics-port, IMAGEGEN_METRICS_PORT)', () => {
  it('is unset unless asked for; 0..65535 are accepted, 0 meaning any free port; the host defaults to 127.0.0.1', () => {
    expect(loadConfig({}).metrics).toEqual({ port: undefined, host: '127.0.0.1' });
    expect(loadConfig({ IMAGEGEN_METRICS_PORT: '' }).metrics.port).toBeUndefined();
    expect(loadConfig({ IMAGEGEN_METRICS_PORT: '0' }).metrics.port).toBe(0);
    expect(loadConfig({ IMAGEGEN_METRICS_PORT: '65535', IMAGEGEN_METRICS_HOST: '0.0.0.0' }).metrics).toEqual({ port: 65535, host: '0.0.0.0' });
  });

  it('the flags win over the variables', () => {
    const config = loadConfig({ IMAGEGEN_METRICS_PORT: '9000', IMAGEGEN_METRICS_HOST: '0.0.0.0' }, { metricsPort: '9464', metricsHost: '::1' });
    expect(config.metrics).toEqual({ port: 9464, host: '::1' });
  });

  it.each([['65536'], ['-1'], ['0x10'], ['9464.5'], [' 80'], ['port'], ['123456']])('IMAGEGEN_METRICS_PORT=%j is refused naming the variable and the range', (value) => {
    const error = refusal({ IMAGEGEN_METRICS_PORT: value });
    expect(error?.variable).toBe('IMAGEGEN_METRICS_PORT');
    expect(error?.message).toContain('0..65535');
  });

  it.each([['65536'], ['abc'], ['']])('--metrics-port %j is refused naming the flag, whatever the variable says', (value) => {
    const error = refusal({ IMAGEGEN_METRICS_PORT: '9464' }, { metricsPort: value });
    expect(error?.variable).toBe('--metrics-port');
    expect(error?.message).toContain('0..65535');
  });
});
