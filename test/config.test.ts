/**
 * `loadConfig` (src/config.ts): the promises of the README's configuration table.
 *
 * Unit tests, no I/O: the environment is an object passed in, never `process.env`.
 * Not repeated here: the ranges of the duration settings (`config-ranges.test.ts`), the
 * generator settings (`config-generator.test.ts`) and the engine settings' effect on
 * `runEngine` (`config-engine.test.ts`).
 */
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DEFAULT_GEMINI_IMAGE_MODEL, DEFAULT_GEMINI_TIMEOUT_MS, GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { DEFAULT_WEBP_QUALITY } from '../src/adapters/image-codec.js';
import { OfflineImageGenerator } from '../src/adapters/offline-image-generator.js';
import { ConfigError, envWithPresets, loadConfig } from '../src/config.js';
import { DEFAULT_JOB_SPEC_LIMITS } from '../src/domain/job-spec.js';
import { DEFAULT_BACKOFF } from '../src/engine/full-jitter-backoff.js';
import { DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE } from '../src/engine/stage-ledger.js';
import { S3ObjectStore } from '../src/sinks/s3-object-store.js';
import { DEFAULT_ENGINE_OPTIONS } from '../src/streams/engine.js';
import { DEFAULT_RUN_OPTIONS } from '../src/streams/run-job.js';
import { refusal, type Env } from './support/config-refusal.js';


describe('loadConfig: defaults are the README configuration table, each from its one owner', () => {
  // No HOME / XDG_CACHE_HOME either: the template dir default is tested on its own below.
  const config = loadConfig({});

  it('data folder, database and storage', () => {
    expect(config.dataDir).toBe(resolve('./.imagegen'));
    expect(config.databaseUrl).toBeUndefined();
    expect(config.storage).toEqual({ kind: 'folder', root: resolve('./.imagegen', 'storage') });
  });

  it('provider offline; the Gemini model and timeout are left unset for the adapter: gemini-2.5-flash-image, 60000 ms', () => {
    expect(config.provider).toBe('offline');
    expect({ ...config.gemini }).toEqual({ model: undefined, baseUrl: undefined, timeoutMs: undefined });
    expect(config.gemini.apiKey).toBeUndefined();
    const gemini = new GeminiImageGenerator({ apiKey: 'k', model: config.gemini.model, timeoutMs: config.gemini.timeoutMs });
    expect([gemini.config.model, gemini.config.baseUrl, gemini.config.timeoutMs]).toEqual(['gemini-2.5-flash-image', undefined, 60_000]);
    expect([DEFAULT_GEMINI_IMAGE_MODEL, DEFAULT_GEMINI_TIMEOUT_MS]).toEqual(['gemini-2.5-flash-image', 60_000]);
  });

  it('engine: concurrency 8/4, budget 5 per slot and no fixed stage budget, timeouts and backoff, read from the engine and the backoff', () => {
    expect({ ...config.engine }).toEqual({
      globalConcurrency: 8,
      stageConcurrency: 4,
      maxAttemptsPerSlot: 5,
      maxReplacementsPerStage: undefined,
      attemptTimeoutMs: 120_000,
      backoffBaseMs: 1000,
      backoffMaxMs: 30_000,
      maxRetryAfterMs: 120_000,
      maxSafetyBlocksPerStage: 3,
    });
    expect(config.engine.maxSafetyBlocksPerStage).toBe(DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE);
    const { globalConcurrency, maxAttemptsPerSlot, attemptTimeoutMs } = DEFAULT_ENGINE_OPTIONS;
    expect(config.engine).toMatchObject({ globalConcurrency, maxAttemptsPerSlot, attemptTimeoutMs });
    expect(config.engine).toMatchObject({ backoffBaseMs: DEFAULT_BACKOFF.baseMs, backoffMaxMs: DEFAULT_BACKOFF.maxMs, maxRetryAfterMs: DEFAULT_BACKOFF.maxRetryAfterMs });
  });

  it('money, limits, queue, shutdown, crash resumes, output', () => {
    expect(config.pricePerImage).toBe(1);
    expect(config.maxQuantity).toBe(1000);
    expect(config.maxQuantity).toBe(DEFAULT_JOB_SPEC_LIMITS.maxQuantity);
    expect(config.queueExpireSeconds).toBe(600);
    expect(config.shutdownGraceMs).toBe(30_000);
    expect(config.maxCrashResumes).toBe(5);
    expect(config.webpQuality).toBe(80);
    expect(config.webpQuality).toBe(DEFAULT_WEBP_QUALITY);
    expect(config.progressIntervalMs).toBe(250);
    expect([config.progressIntervalMs, config.shutdownGraceMs, config.maxCrashResumes]).toEqual([DEFAULT_RUN_OPTIONS.progressIntervalMs, DEFAULT_RUN_OPTIONS.graceMs, DEFAULT_RUN_OPTIONS.maxCrashResumes]);
    expect(config.logLevel).toBe('info');
  });

  it('left unset for their owners: the worker jobs (`runWorker` runs 2) and the offline fault injection (off)', () => {
    expect(config.workerJobs).toBeUndefined();
    expect({ ...config.offline }).toEqual({ failureRate: undefined, latencyMs: undefined, jitterMs: undefined, failureClasses: undefined, seed: undefined });
    const { latencyMs, jitterMs, failureRate, seed } = new OfflineImageGenerator({ ...config.offline, failureClasses: undefined }).config;
    expect({ latencyMs, jitterMs, failureRate, seed }).toEqual({ latencyMs: 0, jitterMs: 0, failureRate: 0, seed: 0 });
  });

  it('IMAGEGEN_PGLITE_TEMPLATE_DIR: $XDG_CACHE_HOME/imagegen-pipeline, else ~/.cache/imagegen-pipeline; off = none', () => {
    expect(loadConfig({ HOME: '/home/u' }).pgliteTemplateDir).toBe('/home/u/.cache/imagegen-pipeline');
    expect(loadConfig({ HOME: '/home/u', XDG_CACHE_HOME: '/xdg' }).pgliteTemplateDir).toBe('/xdg/imagegen-pipeline');
    expect(loadConfig({ HOME: '/home/u', IMAGEGEN_PGLITE_TEMPLATE_DIR: 'off' }).pgliteTemplateDir).toBeUndefined();
    expect(loadConfig({ HOME: '/home/u', IMAGEGEN_PGLITE_TEMPLATE_DIR: '/t' }).pgliteTemplateDir).toBe('/t');
    expect(config.pgliteTemplateDir).toBeUndefined();
  });

  it('IMAGEGEN_PGLITE_THREAD: unset leaves it to the program; on and off say it; anything else is refused by name', () => {
    expect(config.pgliteThread).toBeUndefined();
    expect(loadConfig({ IMAGEGEN_PGLITE_THREAD: 'on' }).pgliteThread).toBe(true);
    expect(loadConfig({ IMAGEGEN_PGLITE_THREAD: 'off' }).pgliteThread).toBe(false);
    expect(() => loadConfig({ IMAGEGEN_PGLITE_THREAD: 'yes' })).toThrow(/IMAGEGEN_PGLITE_THREAD/);
  });

  it('IMAGEGEN_IMAGE_THREAD: unset leaves the per-image work in the image thread; on and off say it; anything else is refused by name', () => {
    expect(config.imageThread).toBeUndefined();
    expect(loadConfig({ IMAGEGEN_IMAGE_THREAD: 'on' }).imageThread).toBe(true);
    expect(loadConfig({ IMAGEGEN_IMAGE_THREAD: 'off' }).imageThread).toBe(false);
    expect(() => loadConfig({ IMAGEGEN_IMAGE_THREAD: 'yes' })).toThrow(/IMAGEGEN_IMAGE_THREAD/);
  });

  it('IMAGEGEN_HELPER_THREADS: unset is batch; batch and normal say it; anything else is refused by name', () => {
    expect(loadConfig({}).helperThreads).toBe('batch');
    expect(loadConfig({ IMAGEGEN_HELPER_THREADS: 'batch' }).helperThreads).toBe('batch');
    expect(loadConfig({ IMAGEGEN_HELPER_THREADS: 'normal' }).helperThreads).toBe('normal');
    expect(() => loadConfig({ IMAGEGEN_HELPER_THREADS: 'idle' })).toThrow(/IMAGEGEN_HELPER_THREADS/);
  });

  it('S3 storage with S3_BUCKET: region left to the store (us-east-1), path style with an endpoint, credentials only as a pair', () => {
    const s3 = loadConfig({ S3_BUCKET: 'b', S3_ENDPOINT: 'http://127.0.0.1:9000', S3_ACCESS_KEY_ID: 'id', S3_SECRET_ACCESS_KEY: 'secret' }).storage;
    expect(s3).toMatchObject({ kind: 's3', bucket: 'b', region: undefined, endpoint: 'http://127.0.0.1:9000', forcePathStyle: true });
    const store = new S3ObjectStore({ bucket: 'b', region: s3.kind === 's3' ? s3.region : 'folder' });
    expect(store.config.region).toBe('us-east-1');
    store.destroy();
    expect(s3.kind === 's3' ? [s3.credentials?.accessKeyId, s3.credentials?.secretAccessKey] : null).toEqual(['id', 'secret']);
    expect(loadConfig({ S3_BUCKET: 'b' }).storage).toMatchObject({ kind: 's3', endpoint: undefined, forcePathStyle: false, credentials: undefined });
    expect(loadConfig({ S3_BUCKET: 'b', S3_ACCESS_KEY_ID: 'id' }).storage).toMatchObject({ credentials: undefined });
    expect(loadConfig({ S3_BUCKET: 'b', S3_ENDPOINT: 'http://e', S3_FORCE_PATH_STYLE: 'false' }).storage).toMatchObject({ forcePathStyle: false });
    // The AWS_* names are read when the S3_* ones are not set.
    const aws = loadConfig({ S3_BUCKET: 'b', AWS_REGION: 'eu-west-3', AWS_ACCESS_KEY_ID: 'aid', AWS_SECRET_ACCESS_KEY: 'asecret' }).storage;
    expect(aws.kind === 's3' ? [aws.region, aws.credentials?.accessKeyId, aws.credentials?.secretAccessKey] : null).toEqual(['eu-west-3', 'aid', 'asecret']);
    expect(loadConfig({ S3_BUCKET: 'b', S3_REGION: 'r', AWS_REGION: 'eu-west-3' }).storage).toMatchObject({ region: 'r' });
  });

  it('an empty variable is the default, not 0 or ""', () => {
    const empty = loadConfig({ IMAGEGEN_CONCURRENCY: '', IMAGEGEN_WORKER_JOBS: '', IMAGEGEN_DATA_DIR: '', IMAGEGEN_LOG_LEVEL: '', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '' });
    expect([empty.engine.globalConcurrency, empty.workerJobs, empty.dataDir, empty.logLevel, empty.engine.maxReplacementsPerStage]).toEqual([
      8,
      undefined,
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

describe('envWithPresets: settings of an entry point of its own (npm run demo) under the environment', () => {
  it('a preset applies where the environment is silent; a set variable wins, even an empty one (then the built-in default)', () => {
    const env = envWithPresets({ IMAGEGEN_OFFLINE_FAILURE_RATE: '0.2', IMAGEGEN_BACKOFF_BASE_MS: '200', IMAGEGEN_PROVIDER: 'offline' }, { IMAGEGEN_BACKOFF_BASE_MS: '7', IMAGEGEN_PROVIDER: '' });
    expect(env).toEqual({ IMAGEGEN_OFFLINE_FAILURE_RATE: '0.2', IMAGEGEN_BACKOFF_BASE_MS: '7', IMAGEGEN_PROVIDER: '' });
    const config = loadConfig(env);
    expect([config.offline.failureRate, config.engine.backoffBaseMs, config.provider]).toEqual([0.2, 7, 'offline']);
    expect(loadConfig(envWithPresets({ IMAGEGEN_PROVIDER: 'offline' }, { GEMINI_API_KEY: 'k' })).provider).toBe('offline');
  });
});

describe('Gemini: Vertex AI as a deliberate choice, IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE', () => {
  it('GEMINI_VERTEX_PROJECT + GEMINI_VERTEX_LOCATION select Vertex AI (provider gemini, no key)', () => {
    const config = loadConfig({ GEMINI_VERTEX_PROJECT: 'my-project-1', GEMINI_VERTEX_LOCATION: 'us-central1' });
    expect(config.provider).toBe('gemini');
    expect(config.gemini.vertex).toEqual({ project: 'my-project-1', location: 'us-central1' });
    expect(config.gemini.apiKey).toBeUndefined();
    expect(loadConfig({ GEMINI_API_KEY: 'k' }).gemini.vertex).toBeUndefined();
  });

  it.each([
    [{ GEMINI_VERTEX_PROJECT: 'my-project-1' }, 'GEMINI_VERTEX_LOCATION'],
    [{ GEMINI_VERTEX_LOCATION: 'us-central1' }, 'GEMINI_VERTEX_PROJECT'],
    [{ GEMINI_VERTEX_PROJECT: 'my-project-1', GEMINI_VERTEX_LOCATION: 'us-central1', GEMINI_API_KEY: 'k' }, 'GEMINI_VERTEX_PROJECT'],
    [{ IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE: '0' }, 'IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE'],
  ])('%o is refused, naming %s', (env, variable) => {
    expect(() => loadConfig(env)).toThrow(expect.objectContaining({ variable }));
  });

  it('IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE is read', () => {
    expect(loadConfig({ IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE: '7' }).engine.maxSafetyBlocksPerStage).toBe(7);
  });
});
