import { join, resolve } from 'node:path';
import pino from 'pino';
import { DEFAULT_WEBP_QUALITY } from './adapters/image-codec.js';
import { boolOf, ConfigError, fractionOf, intOf, type ConfigEnv } from './config-parse.js';
import { ERROR_CLASSES, isErrorClass, type ErrorClass } from './domain/error-class.js';
import { hideField, REDACTED, redactUrlPassword, withSecretsHidden } from './domain/hide-secrets.js';
import { DEFAULT_JOB_SPEC_LIMITS } from './domain/job-spec.js';
import { DEFAULT_BACKOFF, MAX_TIMER_MS } from './engine/full-jitter-backoff.js';
import { DEFAULT_ENGINE_OPTIONS, defaultStageConcurrency } from './streams/engine.js';
import { DEFAULT_PRICE_PER_IMAGE } from './jobs/submit-job.js';
import { DEFAULT_RUN_OPTIONS } from './streams/run-job.js';

export { ConfigError, type ConfigEnv } from './config-parse.js';

/** Where generated and input images live. */
export type StorageConfig =
  | { readonly kind: 'folder'; readonly root: string }
  | {
      readonly kind: 's3';
      readonly bucket: string;
      /** Unset: the store's default region (`us-east-1`). */
      readonly region: string | undefined;
      readonly endpoint: string | undefined;
      readonly forcePathStyle: boolean;
      readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string } | undefined;
    };

/**
 * Everything a process needs, read once from the environment (and CLI flags). Frozen. An
 * `undefined` field was not set: its owner applies its default ({@link loadConfig}'s table).
 */
export interface PipelineConfig {
  /** Embedded data folder: `<dataDir>/db` (PGlite) and `<dataDir>/storage` (folder store). */
  readonly dataDir: string;
  /** PostgreSQL instead of the embedded PGlite. */
  readonly databaseUrl: string | undefined;
  readonly storage: StorageConfig;
  readonly provider: 'offline' | 'gemini';
  /** Unset model or timeout: the generator's own defaults. */
  readonly gemini: { readonly apiKey: string | undefined; readonly model: string | undefined; readonly baseUrl: string | undefined; readonly timeoutMs: number | undefined };
  /** Fault injection of the offline generator; unset fields are off (0). */
  readonly offline: {
    readonly latencyMs: number | undefined;
    readonly jitterMs: number | undefined;
    readonly failureRate: number | undefined;
    readonly failureClasses: readonly ErrorClass[] | undefined;
    readonly seed: number | undefined;
  };
  readonly engine: {
    readonly stageConcurrency: number;
    readonly globalConcurrency: number;
    readonly maxAttemptsPerSlot: number;
    /** Unset: a function of the stage's quantity, applied by the engine. */
    readonly maxReplacementsPerStage: number | undefined;
    readonly attemptTimeoutMs: number;
    readonly backoffBaseMs: number;
    readonly backoffMaxMs: number;
    /** Longest server-requested retry delay honoured; a longer one ends the job's new attempts as `quota_exhausted`. */
    readonly maxRetryAfterMs: number;
  };
  /** Credits one delivered image costs. */
  readonly pricePerImage: number;
  /** Largest `quantity` of one stage. */
  readonly maxQuantity: number;
  readonly webpQuality: number;
  readonly progressIntervalMs: number;
  readonly logLevel: string;
  /** Jobs one worker process runs at once (they share the global attempt limit). Unset: the worker's default. */
  readonly workerJobs: number | undefined;
  /** On SIGTERM/SIGINT, how long in-flight attempts may take before they are aborted. */
  readonly shutdownGraceMs: number;
  /** After this long pg-boss hands a dead worker's queue job to another worker. */
  readonly queueExpireSeconds: number;
  /** Where the template of a fresh embedded database is cached (undefined = none): a new data folder starts in ~1.5 s instead of ~6 s. */
  readonly pgliteTemplateDir: string | undefined;
  /** Runs of one job that may die in a row without delivering anything before the job ends `failed` (`crash_loop`). */
  readonly maxCrashResumes: number;
  /** A job's lease (and a worker's heartbeat) not renewed for this long belongs to a dead process, in ms. */
  readonly leaseTtlMs: number;
  /** The fleet (workers on PostgreSQL). */
  readonly fleet: {
    /** The worker's name in `imagegen workers` and its lease owner ids. Unset: the host name. */
    readonly workerName: string | undefined;
    /** Calls the whole fleet may have in flight to one provider key. Unset: AIMD alone finds the limit. */
    readonly providerMaxInFlight: number | undefined;
    /** Calls the whole fleet may start per minute with one provider key. Unset: no rate cap. */
    readonly providerMaxPerMinute: number | undefined;
    /** Attempts of one user in flight across the fleet. Unset: no cap (fair share still applies). */
    readonly maxInFlightPerUser: number | undefined;
    /** `fleet`: workers with one provider key share one limit; `process`: each worker its own (the old way, for comparisons). */
    readonly providerLimitScope: 'fleet' | 'process';
    /** `false`: attempt permits first come, first served (`IMAGEGEN_FAIR_SHARE=off`, for comparisons). */
    readonly fairShare: boolean;
  };
}

/** Values given on the command line; they win over the environment. */
export interface ConfigOverrides {
  readonly dataDir?: string | undefined;
  readonly provider?: string | undefined;
  readonly concurrency?: string | number | undefined;
}

/**
 * The process environment laid over `presets`: a variable the environment sets wins
 * (set to "", it means the built-in default, as everywhere), the others take the
 * preset. For an entry point with settings of its own (`npm run demo`), so that it
 * never reads or writes `process.env` itself.
 */
export function envWithPresets(presets: ConfigEnv, env: ConfigEnv = process.env): ConfigEnv {
  return Object.freeze({ ...presets, ...env });
}

/** Largest `IMAGEGEN_QUEUE_EXPIRE_SECONDS`: pg-boss wants an expiry under 24 hours. */
export const MAX_QUEUE_EXPIRE_SECONDS = 24 * 60 * 60 - 1;

// The configuration holds the API key, the S3 secret and the database password: each
// object that holds one prints (console.log, JSON.stringify, pino) without it, and the
// secret fields are non-enumerable (pino walks a merge object's own keys). They are
// read by name (`config.gemini.apiKey`); a spread (`{ ...config.gemini }`) drops them.
function hideGeminiKey<T extends { readonly apiKey: string | undefined }>(gemini: T): Readonly<T> {
  return withSecretsHidden('GeminiConfig', hideField(gemini, 'apiKey'), () => ({ ...gemini, apiKey: gemini.apiKey === undefined ? undefined : REDACTED }));
}

function hideStorageSecrets(storage: StorageConfig): StorageConfig {
  if (storage.kind === 'folder' || storage.credentials === undefined) return Object.freeze(storage);
  const credentials = storage.credentials;
  return Object.freeze({
    ...storage,
    credentials: withSecretsHidden('S3Credentials', hideField({ ...credentials }, 'secretAccessKey'), () => ({ accessKeyId: credentials.accessKeyId, secretAccessKey: REDACTED })),
  });
}

function hideConfigSecrets<T extends { readonly databaseUrl: string | undefined }>(config: T): Readonly<T> {
  return withSecretsHidden('PipelineConfig', hideField(config, 'databaseUrl'), () => ({ ...config, databaseUrl: redactUrlPassword(config.databaseUrl) }));
}

/** `IMAGEGEN_PGLITE_TEMPLATE_DIR`, else `$XDG_CACHE_HOME/imagegen-pipeline`, else `~/.cache/imagegen-pipeline`; `off` = none. */
function pgliteTemplateDirOf(env: ConfigEnv): string | undefined {
  const raw = env['IMAGEGEN_PGLITE_TEMPLATE_DIR'];
  if (raw === 'off') return undefined;
  if (raw) return resolve(raw);
  const cacheHome = env['XDG_CACHE_HOME'] || (env['HOME'] ? join(env['HOME'], '.cache') : undefined);
  return cacheHome ? join(cacheHome, 'imagegen-pipeline') : undefined;
}

function storageOf(env: ConfigEnv, dataDir: string): StorageConfig {
  const bucket = env['S3_BUCKET'] || undefined;
  if (!bucket) return { kind: 'folder', root: resolve(dataDir, 'storage') };
  const accessKeyId = env['S3_ACCESS_KEY_ID'] || env['AWS_ACCESS_KEY_ID'];
  const secretAccessKey = env['S3_SECRET_ACCESS_KEY'] || env['AWS_SECRET_ACCESS_KEY'];
  return {
    kind: 's3',
    bucket,
    region: env['S3_REGION'] || env['AWS_REGION'] || undefined,
    endpoint: env['S3_ENDPOINT'] || undefined,
    forcePathStyle: boolOf(env, 'S3_FORCE_PATH_STYLE', Boolean(env['S3_ENDPOINT'])),
    credentials: accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey } : undefined,
  };
}

function failureClassesOf(env: ConfigEnv): ErrorClass[] | undefined {
  const raw = env['IMAGEGEN_OFFLINE_FAILURE_CLASSES'];
  if (!raw) return undefined;
  const names = raw.split(',').map((c) => c.trim());
  const bad = names.filter((c) => !isErrorClass(c));
  if (bad.length > 0) throw new ConfigError('IMAGEGEN_OFFLINE_FAILURE_CLASSES', `unknown class ${bad.join(', ')}; known: ${ERROR_CLASSES.join(', ')}`);
  return names.filter(isErrorClass);
}

/**
 * Reads the configuration: the only place that looks at `process.env`. Flags win.
 *
 * Every default has one owner, the component that uses it. A default owned here is
 * written here; any other is read from its owner's exported constant (so the
 * configuration shows the value in effect), or, where importing the owner would load
 * an SDK every command would then pay for (Gemini, S3, pg-boss) or the owner
 * exports no constant (the offline generator), left `undefined` for the owner to apply.
 *
 * | variable | default (owner) |
 * | --- | --- |
 * | `IMAGEGEN_DATA_DIR` | `./.imagegen` |
 * | `DATABASE_URL` | unset: PGlite in `<data dir>/db` |
 * | `S3_BUCKET` (+ `S3_ENDPOINT`, `S3_FORCE_PATH_STYLE`) | unset: folder `<data dir>/storage`; path style when an endpoint is set |
 * | `S3_REGION` else `AWS_REGION` | `us-east-1` (`S3ObjectStore`) |
 * | `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY` else `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | the AWS SDK's credential chain (a pair, or none) |
 * | `GEMINI_API_KEY` | unset: provider `offline` |
 * | `IMAGEGEN_PROVIDER` | `gemini` with a key, else `offline` |
 * | `GEMINI_MODEL`, `GEMINI_BASE_URL`, `GEMINI_TIMEOUT_MS` | `gemini-2.5-flash-image`, Google, 60000 (`GeminiImageGenerator`) |
 * | `IMAGEGEN_CONCURRENCY`, `IMAGEGEN_STAGE_CONCURRENCY` | 8, min(4, global) (`runEngine`) |
 * | `IMAGEGEN_MAX_ATTEMPTS_PER_SLOT`, `IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE` | 5, max(10, quantity) (`runEngine`) |
 * | `IMAGEGEN_ATTEMPT_TIMEOUT_MS` | 120000 (`runEngine`) |
 * | `IMAGEGEN_BACKOFF_BASE_MS`, `IMAGEGEN_BACKOFF_MAX_MS`, `IMAGEGEN_MAX_RETRY_AFTER_MS` | 1000, 30000, 120000 (`fullJitterBackoff`) |
 * | `IMAGEGEN_PRICE_PER_IMAGE`, `IMAGEGEN_MAX_QUANTITY` | 1, 1000 (`parseJobSpec`: the spec's limit) |
 * | `IMAGEGEN_OFFLINE_LATENCY_MS`, `_JITTER_MS`, `_FAILURE_RATE`, `_FAILURE_CLASSES`, `_SEED` | 0, 0, 0, transient mix, 0 (`OfflineImageGenerator`) |
 * | `IMAGEGEN_WEBP_QUALITY` | 80 (`toWebp`) |
 * | `IMAGEGEN_PROGRESS_INTERVAL_MS`, `IMAGEGEN_SHUTDOWN_GRACE_MS`, `IMAGEGEN_MAX_CRASH_RESUMES` | 250, 30000, 5 (`runStoredJob`) |
 * | `IMAGEGEN_WORKER_JOBS` | 2 (`runWorker`) |
 * | `IMAGEGEN_LOG_LEVEL`, `IMAGEGEN_QUEUE_EXPIRE_SECONDS` | `info`, 600 (only how long a queue message waits for a lease claim) |
 * | `IMAGEGEN_LEASE_TTL_SECONDS` | 15 (`runStoredJob`: a lease not renewed this long is a dead process's) |
 * | `IMAGEGEN_WORKER_NAME` | the host name |
 * | `IMAGEGEN_PROVIDER_MAX_INFLIGHT`, `IMAGEGEN_PROVIDER_MAX_PER_MINUTE`, `IMAGEGEN_MAX_INFLIGHT_PER_USER` | unset (`FleetLimiter`) |
 * | `IMAGEGEN_PROVIDER_LIMIT_SCOPE`, `IMAGEGEN_FAIR_SHARE` | `fleet`, `on` (`process`, `off`: the old behaviour, for comparisons) |
 * | `IMAGEGEN_PGLITE_TEMPLATE_DIR` | `$XDG_CACHE_HOME/imagegen-pipeline` or `~/.cache/imagegen-pipeline` (`off`: none) |
 *
 * Durations in ms are at most 2^31-1 (Node's timer limit: a longer delay fires after 1 ms).
 */
export function loadConfig(env: ConfigEnv = process.env, overrides: ConfigOverrides = {}): PipelineConfig {
  // An empty flag value is a mistake (a variable that expanded to nothing), not "the current folder".
  if (overrides.dataDir !== undefined && overrides.dataDir.trim() === '') throw new ConfigError('--data-dir', 'must be a folder path, got ""');
  const dataDir = resolve(overrides.dataDir ?? (env['IMAGEGEN_DATA_DIR'] || './.imagegen'));
  const apiKey = env['GEMINI_API_KEY'] || undefined;
  const providerRaw = overrides.provider ?? (env['IMAGEGEN_PROVIDER'] || (apiKey ? 'gemini' : 'offline'));
  if (providerRaw !== 'offline' && providerRaw !== 'gemini') {
    throw new ConfigError(overrides.provider !== undefined ? '--provider' : 'IMAGEGEN_PROVIDER', `must be offline or gemini, got ${JSON.stringify(providerRaw)}`);
  }
  if (providerRaw === 'gemini' && !apiKey) throw new ConfigError('GEMINI_API_KEY', 'is required with --provider gemini');

  const envConcurrency = intOf(env, 'IMAGEGEN_CONCURRENCY', 1, 1000);
  // Decimal digits only: Number() would read "" as 0 (then the default) and "0x8" as 8.
  if (overrides.concurrency !== undefined && !/^[0-9]+$/.test(String(overrides.concurrency))) {
    throw new ConfigError('--concurrency', `must be an integer in 1..1000 (decimal digits), got ${JSON.stringify(String(overrides.concurrency))}`);
  }
  const flagConcurrency = overrides.concurrency === undefined ? undefined : intOf({ '--concurrency': String(overrides.concurrency) }, '--concurrency', 1, 1000);
  const globalConcurrency = flagConcurrency ?? envConcurrency ?? DEFAULT_ENGINE_OPTIONS.globalConcurrency;
  const logLevel = env['IMAGEGEN_LOG_LEVEL'] || 'info';
  const logLevels = [...Object.keys(pino.levels.values), 'silent'];
  // pino throws "unknown level" (with a stack) when the logger is built; say it here instead.
  if (!logLevels.includes(logLevel)) throw new ConfigError('IMAGEGEN_LOG_LEVEL', `must be one of ${logLevels.join(', ')}, got ${JSON.stringify(logLevel)}`);

  return hideConfigSecrets({
    dataDir,
    databaseUrl: env['DATABASE_URL'] || undefined,
    storage: hideStorageSecrets(storageOf(env, dataDir)),
    provider: providerRaw,
    gemini: hideGeminiKey({
      apiKey,
      model: env['GEMINI_MODEL'] || undefined,
      baseUrl: env['GEMINI_BASE_URL'] || undefined,
      timeoutMs: intOf(env, 'GEMINI_TIMEOUT_MS', 1, MAX_TIMER_MS),
    }),
    offline: Object.freeze({
      latencyMs: intOf(env, 'IMAGEGEN_OFFLINE_LATENCY_MS', 0, MAX_TIMER_MS),
      jitterMs: intOf(env, 'IMAGEGEN_OFFLINE_JITTER_MS', 0, MAX_TIMER_MS),
      failureRate: fractionOf(env, 'IMAGEGEN_OFFLINE_FAILURE_RATE'),
      failureClasses: failureClassesOf(env),
      seed: intOf(env, 'IMAGEGEN_OFFLINE_SEED', -(2 ** 31), 2 ** 31),
    }),
    engine: Object.freeze({
      stageConcurrency: intOf(env, 'IMAGEGEN_STAGE_CONCURRENCY', 1, 1000) ?? defaultStageConcurrency(globalConcurrency),
      globalConcurrency,
      maxAttemptsPerSlot: intOf(env, 'IMAGEGEN_MAX_ATTEMPTS_PER_SLOT', 1, 100) ?? DEFAULT_ENGINE_OPTIONS.maxAttemptsPerSlot,
      maxReplacementsPerStage: intOf(env, 'IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE', 0),
      attemptTimeoutMs: intOf(env, 'IMAGEGEN_ATTEMPT_TIMEOUT_MS', 1, MAX_TIMER_MS) ?? DEFAULT_ENGINE_OPTIONS.attemptTimeoutMs,
      backoffBaseMs: intOf(env, 'IMAGEGEN_BACKOFF_BASE_MS', 0, MAX_TIMER_MS) ?? DEFAULT_BACKOFF.baseMs,
      backoffMaxMs: intOf(env, 'IMAGEGEN_BACKOFF_MAX_MS', 0, MAX_TIMER_MS) ?? DEFAULT_BACKOFF.maxMs,
      maxRetryAfterMs: intOf(env, 'IMAGEGEN_MAX_RETRY_AFTER_MS', 0, MAX_TIMER_MS) ?? DEFAULT_BACKOFF.maxRetryAfterMs,
    }),
    pricePerImage: intOf(env, 'IMAGEGEN_PRICE_PER_IMAGE', 0) ?? DEFAULT_PRICE_PER_IMAGE,
    maxQuantity: intOf(env, 'IMAGEGEN_MAX_QUANTITY', 1) ?? DEFAULT_JOB_SPEC_LIMITS.maxQuantity,
    webpQuality: intOf(env, 'IMAGEGEN_WEBP_QUALITY', 1, 100) ?? DEFAULT_WEBP_QUALITY,
    progressIntervalMs: intOf(env, 'IMAGEGEN_PROGRESS_INTERVAL_MS', 0, MAX_TIMER_MS) ?? DEFAULT_RUN_OPTIONS.progressIntervalMs,
    logLevel,
    workerJobs: intOf(env, 'IMAGEGEN_WORKER_JOBS', 1, 100),
    shutdownGraceMs: intOf(env, 'IMAGEGEN_SHUTDOWN_GRACE_MS', 0, MAX_TIMER_MS) ?? DEFAULT_RUN_OPTIONS.graceMs,
    // pg-boss refuses an expiry of 24 hours or more (and it stays far below the 2^31-1 ms timer limit).
    queueExpireSeconds: intOf(env, 'IMAGEGEN_QUEUE_EXPIRE_SECONDS', 1, MAX_QUEUE_EXPIRE_SECONDS) ?? 600,
    maxCrashResumes: intOf(env, 'IMAGEGEN_MAX_CRASH_RESUMES', 1, 1000) ?? DEFAULT_RUN_OPTIONS.maxCrashResumes,
    pgliteTemplateDir: pgliteTemplateDirOf(env),
    leaseTtlMs: (intOf(env, 'IMAGEGEN_LEASE_TTL_SECONDS', 1, MAX_LEASE_TTL_SECONDS) ?? DEFAULT_RUN_OPTIONS.leaseTtlMs / 1000) * 1000,
    fleet: Object.freeze({
      workerName: workerNameOf(env),
      providerMaxInFlight: intOf(env, 'IMAGEGEN_PROVIDER_MAX_INFLIGHT', 1, 100_000),
      providerMaxPerMinute: intOf(env, 'IMAGEGEN_PROVIDER_MAX_PER_MINUTE', 1, 10_000_000),
      maxInFlightPerUser: intOf(env, 'IMAGEGEN_MAX_INFLIGHT_PER_USER', 1, 100_000),
      providerLimitScope: choiceOf(env, 'IMAGEGEN_PROVIDER_LIMIT_SCOPE', ['fleet', 'process'] as const) ?? 'fleet',
      fairShare: (choiceOf(env, 'IMAGEGEN_FAIR_SHARE', ['on', 'off'] as const) ?? 'on') === 'on',
    }),
  });
}

/** One of `choices`, or undefined when unset or empty; anything else names the variable and the choices. */
function choiceOf<const C extends readonly string[]>(env: ConfigEnv, name: string, choices: C): C[number] | undefined {
  const raw = env[name];
  if (!raw) return undefined;
  if (!choices.includes(raw)) throw new ConfigError(name, `must be one of ${choices.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw as C[number];
}

/** Largest `IMAGEGEN_LEASE_TTL_SECONDS`: one hour (a dead worker's job would wait that long). */
export const MAX_LEASE_TTL_SECONDS = 3600;

/** `IMAGEGEN_WORKER_NAME`: letters, digits, `.`, `_`, `-` (it is the first part of `name:pid:uuid`). */
function workerNameOf(env: ConfigEnv): string | undefined {
  const raw = env['IMAGEGEN_WORKER_NAME'];
  if (!raw) return undefined;
  if (!/^[A-Za-z0-9._-]{1,64}$/.test(raw)) throw new ConfigError('IMAGEGEN_WORKER_NAME', `must match [A-Za-z0-9._-]{1,64}, got ${JSON.stringify(raw)}`);
  return raw;
}
