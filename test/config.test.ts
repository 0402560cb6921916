/**
 * `loadConfig` (src/config.ts): the promises of the README's configuration table.
 *
 * Unit tests, no I/O: the environment is an object passed in, never `process.env`.
 * Ranges of the duration settings are in `config-ranges.test.ts`; not repeated here.
 */
import { resolve } from 'node:path';
import { lastValueFrom, throwError, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, type ConfigOverrides } from '../src/config.js';
import { ERROR_CLASSES, PipelineError, isRetryable } from '../src/domain/error-class.js';
import type { PipelineEvent } from '../src/domain/events.js';
import { parseJobSpec } from '../src/domain/job-spec.js';
import type { AttemptRequest, EnginePorts } from '../src/domain/ports.js';
import { DEFAULT_OFFLINE_FAILURE_CLASSES, OfflineImageGenerator } from '../src/adapters/offline-image-generator.js';
import { engineOptionsOf } from '../src/pipeline.js';
import { DEFAULT_ENGINE_OPTIONS, runEngine } from '../src/streams/engine.js';

type Env = Record<string, string | undefined>;

/** The ConfigError `loadConfig` throws, or null when it accepts. */
function refusal(env: Env, overrides: ConfigOverrides = {}): ConfigError | null {
  try {
    loadConfig(env, overrides);
    return null;
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
}

describe('loadConfig: defaults are the README configuration table', () => {
  // No HOME / XDG_CACHE_HOME either: the template dir default is tested on its own below.
  const config = loadConfig({});

  it('data folder, database and storage', () => {
    expect(config.dataDir).toBe(resolve('./.imagegen'));
    expect(config.databaseUrl).toBeUndefined();
    expect(config.storage).toEqual({ kind: 'folder', root: resolve('./.imagegen', 'storage') });
  });

  it('provider and Gemini settings', () => {
    expect(config.provider).toBe('offline');
    expect(config.gemini.apiKey).toBeUndefined();
    expect(config.gemini.model).toBe('gemini-2.5-flash-image');
    expect(config.gemini.baseUrl).toBeUndefined();
    expect(config.gemini.timeoutMs).toBe(60_000);
  });

  it('engine: concurrency 8/4, budget 5 per slot and no fixed stage budget, timeouts and backoff', () => {
    expect({ ...config.engine }).toEqual({
      globalConcurrency: 8,
      stageConcurrency: 4,
      maxAttemptsPerSlot: 5,
      maxReplacementsPerStage: undefined,
      attemptTimeoutMs: 120_000,
      backoffBaseMs: 1000,
      backoffMaxMs: 30_000,
      maxRetryAfterMs: 120_000,
    });
  });

  it('money, limits, offline generator, queue, shutdown, worker, crash resumes, output', () => {
    expect(config.pricePerImage).toBe(1);
    expect(config.maxQuantity).toBe(1000);
    expect({ ...config.offline }).toEqual({ failureRate: 0, latencyMs: 0, jitterMs: 0, failureClasses: undefined, seed: 0 });
    expect(config.queueExpireSeconds).toBe(600);
    expect(config.shutdownGraceMs).toBe(30_000);
    expect(config.workerJobs).toBe(2);
    expect(config.maxCrashResumes).toBe(5);
    expect(config.webpQuality).toBe(80);
    expect(config.progressIntervalMs).toBe(250);
    expect(config.logLevel).toBe('info');
  });

  it('IMAGEGEN_PGLITE_TEMPLATE_DIR: $XDG_CACHE_HOME/imagegen-pipeline, else ~/.cache/imagegen-pipeline; off = none', () => {
    expect(loadConfig({ HOME: '/home/u' }).pgliteTemplateDir).toBe('/home/u/.cache/imagegen-pipeline');
    expect(loadConfig({ HOME: '/home/u', XDG_CACHE_HOME: '/xdg' }).pgliteTemplateDir).toBe('/xdg/imagegen-pipeline');
    expect(loadConfig({ HOME: '/home/u', IMAGEGEN_PGLITE_TEMPLATE_DIR: 'off' }).pgliteTemplateDir).toBeUndefined();
    expect(loadConfig({ HOME: '/home/u', IMAGEGEN_PGLITE_TEMPLATE_DIR: '/t' }).pgliteTemplateDir).toBe('/t');
    expect(config.pgliteTemplateDir).toBeUndefined();
  });

  it('"transient mix": without IMAGEGEN_OFFLINE_FAILURE_CLASSES the offline generator injects retryable classes only', () => {
    const generator = new OfflineImageGenerator({ failureRate: 1, ...(config.offline.failureClasses ? { failureClasses: config.offline.failureClasses } : {}) });
    expect(generator.config.failureClasses).toEqual(DEFAULT_OFFLINE_FAILURE_CLASSES);
    expect(DEFAULT_OFFLINE_FAILURE_CLASSES.length).toBeGreaterThan(1);
    for (const errorClass of DEFAULT_OFFLINE_FAILURE_CLASSES) expect(isRetryable(errorClass), errorClass).toBe(true);
    // Every injected failure is drawn from the mix.
    const planned = new Set(Array.from({ length: 200 }, (_, i) => generator.plannedFailure({ jobId: 'j', stageIndex: 0, slotIndex: i, attempt: 1 })));
    for (const errorClass of planned) expect(DEFAULT_OFFLINE_FAILURE_CLASSES).toContain(errorClass);
  });

  it('S3 storage with S3_BUCKET: region us-east-1, path style with an endpoint, credentials only as a pair', () => {
    const s3 = loadConfig({ S3_BUCKET: 'b', S3_ENDPOINT: 'http://127.0.0.1:9000', S3_ACCESS_KEY_ID: 'id', S3_SECRET_ACCESS_KEY: 'secret' }).storage;
    expect(s3).toMatchObject({ kind: 's3', bucket: 'b', region: 'us-east-1', endpoint: 'http://127.0.0.1:9000', forcePathStyle: true });
    expect(s3.kind === 's3' ? [s3.credentials?.accessKeyId, s3.credentials?.secretAccessKey] : null).toEqual(['id', 'secret']);
    expect(loadConfig({ S3_BUCKET: 'b' }).storage).toMatchObject({ kind: 's3', endpoint: undefined, forcePathStyle: false, credentials: undefined });
    expect(loadConfig({ S3_BUCKET: 'b', S3_ACCESS_KEY_ID: 'id' }).storage).toMatchObject({ credentials: undefined });
    expect(loadConfig({ S3_BUCKET: 'b', S3_ENDPOINT: 'http://e', S3_FORCE_PATH_STYLE: 'false' }).storage).toMatchObject({ forcePathStyle: false });
  });

  it('an empty variable is the default, not 0 or ""', () => {
    const empty = loadConfig({ IMAGEGEN_CONCURRENCY: '', IMAGEGEN_WORKER_JOBS: '', IMAGEGEN_DATA_DIR: '', IMAGEGEN_LOG_LEVEL: '', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '' });
    expect([empty.engine.globalConcurrency, empty.workerJobs, empty.dataDir, empty.logLevel, empty.engine.maxReplacementsPerStage]).toEqual([
      8,
      2,
      resolve('./.imagegen'),
      'info',
      undefined,
    ]);
  });
});

describe('loadConfig: a bad value is a ConfigError that names the variable', () => {
  // Not the duration ranges (config-ranges.test.ts): integers, fractions, booleans, enums, lists.
  const CASES: readonly [string, Env][] = [
    ['IMAGEGEN_CONCURRENCY', { IMAGEGEN_CONCURRENCY: '0' }],
    ['IMAGEGEN_CONCURRENCY', { IMAGEGEN_CONCURRENCY: 'eight' }],
    ['IMAGEGEN_STAGE_CONCURRENCY', { IMAGEGEN_STAGE_CONCURRENCY: '1001' }],
    ['IMAGEGEN_MAX_ATTEMPTS_PER_SLOT', { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '101' }],
    ['IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE', { IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '-1' }],
    ['IMAGEGEN_PRICE_PER_IMAGE', { IMAGEGEN_PRICE_PER_IMAGE: '1.5' }],
    ['IMAGEGEN_MAX_QUANTITY', { IMAGEGEN_MAX_QUANTITY: '0' }],
    ['IMAGEGEN_WEBP_QUALITY', { IMAGEGEN_WEBP_QUALITY: '101' }],
    ['IMAGEGEN_WORKER_JOBS', { IMAGEGEN_WORKER_JOBS: '0' }],
    ['IMAGEGEN_WORKER_JOBS', { IMAGEGEN_WORKER_JOBS: '101' }],
    ['IMAGEGEN_MAX_CRASH_RESUMES', { IMAGEGEN_MAX_CRASH_RESUMES: '1001' }],
    ['IMAGEGEN_OFFLINE_SEED', { IMAGEGEN_OFFLINE_SEED: 'seven' }],
    ['IMAGEGEN_OFFLINE_FAILURE_RATE', { IMAGEGEN_OFFLINE_FAILURE_RATE: '1.5' }],
    ['IMAGEGEN_OFFLINE_FAILURE_RATE', { IMAGEGEN_OFFLINE_FAILURE_RATE: 'half' }],
    ['S3_FORCE_PATH_STYLE', { S3_BUCKET: 'b', S3_FORCE_PATH_STYLE: 'maybe' }],
    ['IMAGEGEN_LOG_LEVEL', { IMAGEGEN_LOG_LEVEL: 'loud' }],
    ['IMAGEGEN_PROVIDER', { IMAGEGEN_PROVIDER: 'openai' }],
    ['IMAGEGEN_OFFLINE_FAILURE_CLASSES', { IMAGEGEN_OFFLINE_FAILURE_CLASSES: 'overloaded,bogus' }],
  ];

  it.each(CASES)('%s %j', (variable, env) => {
    const error = refusal(env);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error?.variable).toBe(variable);
    expect(error?.message.startsWith(`${variable}: `)).toBe(true);
    // The message quotes the value at fault.
    const value = env[variable] as string;
    if (variable === 'IMAGEGEN_OFFLINE_FAILURE_CLASSES') expect(error?.message).toContain('bogus');
    else expect(error?.message).toContain(JSON.stringify(value));
  });

  it('flags at fault are named as flags', () => {
    expect(refusal({}, { provider: 'openai' })?.variable).toBe('--provider');
    expect(refusal({}, { concurrency: '0x8' })?.variable).toBe('--concurrency');
    expect(refusal({}, { concurrency: '' })?.variable).toBe('--concurrency');
    expect(refusal({}, { concurrency: '1001' })?.variable).toBe('--concurrency');
    expect(refusal({}, { dataDir: '' })?.variable).toBe('--data-dir');
    expect(refusal({}, { dataDir: '   ' })?.variable).toBe('--data-dir');
  });
});

describe('loadConfig: flags win over the environment', () => {
  it('--provider beats IMAGEGEN_PROVIDER and the key', () => {
    const env = { GEMINI_API_KEY: 'k', IMAGEGEN_PROVIDER: 'gemini' };
    expect(loadConfig(env).provider).toBe('gemini');
    expect(loadConfig(env, { provider: 'offline' }).provider).toBe('offline');
    expect(loadConfig({ GEMINI_API_KEY: 'k', IMAGEGEN_PROVIDER: 'offline' }, { provider: 'gemini' }).provider).toBe('gemini');
  });

  it('--concurrency beats IMAGEGEN_CONCURRENCY (a string or a number), and the stage default follows it', () => {
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '3' }, { concurrency: '12' }).engine).toMatchObject({ globalConcurrency: 12, stageConcurrency: 4 });
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '12' }, { concurrency: 2 }).engine).toMatchObject({ globalConcurrency: 2, stageConcurrency: 2 });
    // An explicit IMAGEGEN_STAGE_CONCURRENCY is not overridden by --concurrency.
    expect(loadConfig({ IMAGEGEN_STAGE_CONCURRENCY: '3' }, { concurrency: '1' }).engine).toMatchObject({ globalConcurrency: 1, stageConcurrency: 3 });
  });

  it('--data-dir beats IMAGEGEN_DATA_DIR, and the folder storage moves with it', () => {
    const config = loadConfig({ IMAGEGEN_DATA_DIR: '/from-env' }, { dataDir: '/from-flag' });
    expect(config.dataDir).toBe('/from-flag');
    expect(config.storage).toEqual({ kind: 'folder', root: '/from-flag/storage' });
    expect(loadConfig({ IMAGEGEN_DATA_DIR: '/from-env' }).dataDir).toBe('/from-env');
  });

  it('a flag beats a bad variable of the same setting: the variable is not read', () => {
    expect(loadConfig({ IMAGEGEN_PROVIDER: 'openai' }, { provider: 'offline' }).provider).toBe('offline');
  });
});

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

describe('IMAGEGEN_CONCURRENCY vs IMAGEGEN_STAGE_CONCURRENCY', () => {
  it.each([
    ['1', 1],
    ['3', 3],
    ['4', 4],
    ['8', 4],
    ['1000', 4],
  ])('IMAGEGEN_CONCURRENCY=%s: the stage default is min(4, global) = %i', (global, stage) => {
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: global }).engine).toMatchObject({ globalConcurrency: Number(global), stageConcurrency: stage });
  });

  it('an explicit IMAGEGEN_STAGE_CONCURRENCY is taken as given', () => {
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '2', IMAGEGEN_STAGE_CONCURRENCY: '6' }).engine).toMatchObject({ globalConcurrency: 2, stageConcurrency: 6 });
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '16', IMAGEGEN_STAGE_CONCURRENCY: '1' }).engine).toMatchObject({ globalConcurrency: 16, stageConcurrency: 1 });
  });

  it('engineOptionsOf passes the stage concurrency to the engine', () => {
    expect(engineOptionsOf(loadConfig({ IMAGEGEN_CONCURRENCY: '2' })).stageConcurrency).toBe(2);
  });
});

describe('IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE unset: the engine uses max(10, quantity)', () => {
  /**
   * Runs a one-stage job of `quantity` through `runEngine` with the engine options the
   * configuration `env` gives, every attempt failing `overloaded` (retryable), no
   * backoff and a per-slot budget that never binds: the attempts made are exactly
   * quantity + the stage's replacement budget.
   */
  async function attemptsMade(env: Env, quantity: number): Promise<{ calls: number; events: PipelineEvent[] }> {
    const config = loadConfig({ IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '100', IMAGEGEN_BACKOFF_BASE_MS: '0', IMAGEGEN_BACKOFF_MAX_MS: '0', ...env });
    const stages = parseJobSpec({ userId: 'u', stages: [{ quantity, prompt: 'p', mergedImageAttachId: 'in' }] }).stages;
    let calls = 0;
    const ports: EnginePorts = {
      generate: (_request: AttemptRequest) => {
        calls++;
        return throwError(() => new PipelineError('overloaded', 'scripted 503'));
      },
      deliver: () => throwError(() => new Error('nothing is ever generated')),
    };
    const events = await lastValueFrom(runEngine({ jobId: 'j', stages }, ports, { ...engineOptionsOf(config), random: () => 0 }).pipe(toArray()));
    return { calls, events };
  }

  it('the default lives in the engine (DEFAULT_ENGINE_OPTIONS), and the config leaves it to the engine', () => {
    expect(loadConfig({}).engine.maxReplacementsPerStage).toBeUndefined();
    expect('maxReplacementsPerStage' in engineOptionsOf(loadConfig({}))).toBe(false);
    const byQuantity = DEFAULT_ENGINE_OPTIONS.maxReplacementsPerStage;
    expect([1, 3, 10, 11, 25, 1000].map((q) => byQuantity(q))).toEqual([10, 10, 10, 11, 25, 1000]);
  });

  it.each([
    [3, 10],
    [10, 10],
    [25, 25],
  ])('quantity %i: %i replacements, then the stage ends short with budget_exhausted', async (quantity, replacements) => {
    const { calls, events } = await attemptsMade({}, quantity);
    expect(calls).toBe(quantity + replacements);
    expect(events.filter((e) => e.type === 'attempt:failed')).toHaveLength(quantity + replacements);
    const short = events.find((e) => e.type === 'stage:short');
    expect(short).toMatchObject({ missing: quantity, reason: 'budget_exhausted', errorClass: 'overloaded' });
    expect(events.at(-1)).toMatchObject({ type: 'job:finished', status: 'failed' });
  });

  it('a set value replaces the default (0 included)', async () => {
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '2' }, 3)).calls).toBe(5);
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '0' }, 3)).calls).toBe(3);
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '40' }, 25)).calls).toBe(65);
  });
});
