import { join, resolve } from 'node:path';
import pino from 'pino';
import { ERROR_CLASSES, isErrorClass, type ErrorClass } from './domain/error-class.js';
import { MAX_TIMER_MS } from './engine/full-jitter-backoff.js';
import { hideField, REDACTED, redactUrlPassword, withSecretsHidden } from './domain/hide-secrets.js';

/** Where generated and input images live. */
export type StorageConfig =
  | { readonly kind: 'folder'; readonly root: string }
  | {
      readonly kind: 's3';
      readonly bucket: string;
      readonly region: string;
      readonly endpoint: string | undefined;
      readonly forcePathStyle: boolean;
      readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string } | undefined;
    };

/** Everything a process needs, read once from the environment (and CLI flags). Frozen. */
export interface PipelineConfig {
  /** Embedded data folder: `<dataDir>/db` (PGlite) and `<dataDir>/storage` (folder store). */
  readonly dataDir: string;
  /** PostgreSQL instead of the embedded PGlite. */
  readonly databaseUrl: string | undefined;
  readonly storage: StorageConfig;
  readonly provider: 'offline' | 'gemini';
  readonly gemini: {
    readonly apiKey: string | undefined;
    readonly model: string;
    readonly baseUrl: string | undefined;
    readonly timeoutMs: number;
  };
  readonly offline: {
    readonly latencyMs: number;
    readonly jitterMs: number;
    readonly failureRate: number;
    readonly failureClasses: readonly ErrorClass[] | undefined;
    readonly seed: number;
  };
  readonly engine: {
    readonly stageConcurrency: number;
    readonly globalConcurrency: number;
    readonly maxAttemptsPerSlot: number;
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
  /** Jobs one worker process runs at once (they share the global attempt limit). */
  readonly workerJobs: number;
  /** On SIGTERM/SIGINT, how long in-flight attempts may take before they are aborted. */
  readonly shutdownGraceMs: number;
  /** After this long pg-boss hands a dead worker's queue job to another worker. */
  readonly queueExpireSeconds: number;
  /** Where the template of a fresh embedded database is cached (undefined = none): a new data folder starts in ~1.5 s instead of ~6 s. */
  readonly pgliteTemplateDir: string | undefined;
  /** Runs of one job that may die in a row without delivering anything before the job ends `failed` (`crash_loop`). */
  readonly maxCrashResumes: number;
}

/** A bad environment variable or flag: names it and the rule. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly variable: string,
    readonly rule: string,
  ) {
    super(`${variable}: ${rule}`);
  }
}

/** Values given on the command line; they win over the environment. */
export interface ConfigOverrides {
  readonly dataDir?: string | undefined;
  readonly provider?: string | undefined;
  readonly concurrency?: string | number | undefined;
}

type Env = Readonly<Record<string, string | undefined>>;

/** Largest `IMAGEGEN_QUEUE_EXPIRE_SECONDS`: pg-boss wants an expiry under 24 hours. */
export const MAX_QUEUE_EXPIRE_SECONDS = 24 * 60 * 60 - 1;

function int(env: Env, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) throw new ConfigError(name, `must be an integer in ${min}..${max}, got ${JSON.stringify(raw)}`);
  return value;
}

function fraction(env: Env, name: string, fallback: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!(value >= 0 && value <= 1)) throw new ConfigError(name, `must be a number in 0..1, got ${JSON.stringify(raw)}`);
  return value;
}

function bool(env: Env, name: string, fallback: boolean): boolean {
  const raw = env[name]?.toLowerCase();
  if (raw === undefined || raw === '') return fallback;
  if (['1', 'true', 'yes'].includes(raw)) return true;
  if (['0', 'false', 'no'].includes(raw)) return false;
  throw new ConfigError(name, `must be true or false, got ${JSON.stringify(env[name])}`);
}

// The configuration holds the API key, the S3 secret and the database password: give
// each object that holds one a printed form (console.log, JSON.stringify, pino) without
// it, and make the secret fields non-enumerable (pino walks a merge object's own keys).
// They are read by name (`config.gemini.apiKey`); a spread (`{ ...config.gemini }`) drops them.
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
function pgliteTemplateDirOf(env: Env): string | undefined {
  const raw = env['IMAGEGEN_PGLITE_TEMPLATE_DIR'];
  if (raw === 'off') return undefined;
  if (raw) return resolve(raw);
  const cacheHome = env['XDG_CACHE_HOME'] || (env['HOME'] ? join(env['HOME'], '.cache') : undefined);
  return cacheHome ? join(cacheHome, 'imagegen-pipeline') : undefined;
}

/**
 * Reads the configuration. The only place that looks at `process.env`.
 *
 * | variable | default |
 * | --- | --- |
 * | `IMAGEGEN_DATA_DIR` | `./.imagegen` |
 * | `DATABASE_URL` | unset: PGlite in `<data dir>/db` |
 * | `S3_BUCKET` (+ `S3_ENDPOINT`, `S3_REGION`, `S3_FORCE_PATH_STYLE`, `S3_ACCESS_KEY_ID`, `S3_SECRET_ACCESS_KEY`) | unset: folder `<data dir>/storage` |
 * | `GEMINI_API_KEY` | unset: provider `offline` |
 * | `GEMINI_MODEL`, `GEMINI_BASE_URL`, `GEMINI_TIMEOUT_MS` | `gemini-2.5-flash-image`, Google, 60000 |
 * | `IMAGEGEN_PROVIDER` | `gemini` with a key, else `offline` |
 * | `IMAGEGEN_CONCURRENCY`, `IMAGEGEN_STAGE_CONCURRENCY` | 8, 4 |
 * | `IMAGEGEN_MAX_ATTEMPTS_PER_SLOT`, `IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE` | 5, max(10, quantity) |
 * | `IMAGEGEN_ATTEMPT_TIMEOUT_MS`, `IMAGEGEN_BACKOFF_BASE_MS`, `IMAGEGEN_BACKOFF_MAX_MS` | 120000, 1000, 30000 |
 * | `IMAGEGEN_MAX_RETRY_AFTER_MS` | 120000 |
 * | `IMAGEGEN_PRICE_PER_IMAGE`, `IMAGEGEN_MAX_QUANTITY` | 1, 1000 |
 * | `IMAGEGEN_OFFLINE_LATENCY_MS`, `IMAGEGEN_OFFLINE_JITTER_MS`, `IMAGEGEN_OFFLINE_FAILURE_RATE`, `IMAGEGEN_OFFLINE_FAILURE_CLASSES`, `IMAGEGEN_OFFLINE_SEED` | 0, 0, 0, transient mix, 0 |
 * | `IMAGEGEN_WEBP_QUALITY`, `IMAGEGEN_PROGRESS_INTERVAL_MS`, `IMAGEGEN_LOG_LEVEL` | 80, 250, `info` |
 * | `IMAGEGEN_WORKER_JOBS`, `IMAGEGEN_QUEUE_EXPIRE_SECONDS`, `IMAGEGEN_SHUTDOWN_GRACE_MS` | 2, 600, 30000 |
 * | `IMAGEGEN_MAX_CRASH_RESUMES` | 5 |
 * | `IMAGEGEN_PGLITE_TEMPLATE_DIR` | `~/.cache/imagegen-pipeline` (`off`: none) |
 *
 * Durations in ms are at most 2^31-1 (Node's timer limit: a longer delay fires after 1 ms).
 */
export function loadConfig(env: Env = process.env, overrides: ConfigOverrides = {}): PipelineConfig {
  // An empty flag value is a mistake (a variable that expanded to nothing), not "the current folder".
  if (overrides.dataDir !== undefined && overrides.dataDir.trim() === '') throw new ConfigError('--data-dir', 'must be a folder path, got ""');
  const dataDir = resolve(overrides.dataDir ?? (env['IMAGEGEN_DATA_DIR'] || './.imagegen'));
  const apiKey = env['GEMINI_API_KEY'] || undefined;
  const providerRaw = overrides.provider ?? (env['IMAGEGEN_PROVIDER'] || (apiKey ? 'gemini' : 'offline'));
  if (providerRaw !== 'offline' && providerRaw !== 'gemini') {
    throw new ConfigError(overrides.provider !== undefined ? '--provider' : 'IMAGEGEN_PROVIDER', `must be offline or gemini, got ${JSON.stringify(providerRaw)}`);
  }
  if (providerRaw === 'gemini' && !apiKey) throw new ConfigError('GEMINI_API_KEY', 'is required with --provider gemini');

  const bucket = env['S3_BUCKET'] || undefined;
  const accessKeyId = env['S3_ACCESS_KEY_ID'] || env['AWS_ACCESS_KEY_ID'];
  const secretAccessKey = env['S3_SECRET_ACCESS_KEY'] || env['AWS_SECRET_ACCESS_KEY'];
  const storage: StorageConfig = bucket
    ? {
        kind: 's3',
        bucket,
        region: env['S3_REGION'] || env['AWS_REGION'] || 'us-east-1',
        endpoint: env['S3_ENDPOINT'] || undefined,
        forcePathStyle: bool(env, 'S3_FORCE_PATH_STYLE', Boolean(env['S3_ENDPOINT'])),
        credentials: accessKeyId && secretAccessKey ? { accessKeyId, secretAccessKey } : undefined,
      }
    : { kind: 'folder', root: resolve(dataDir, 'storage') };

  let globalConcurrency = int(env, 'IMAGEGEN_CONCURRENCY', 8, 1, 1000);
  if (overrides.concurrency !== undefined) {
    // Decimal digits only: Number() would read "" as 0 (then the default) and "0x8" as 8.
    if (!/^[0-9]+$/.test(String(overrides.concurrency))) {
      throw new ConfigError('--concurrency', `must be an integer in 1..1000 (decimal digits), got ${JSON.stringify(String(overrides.concurrency))}`);
    }
    globalConcurrency = int({ '--concurrency': String(overrides.concurrency) }, '--concurrency', 8, 1, 1000);
  }
  const classesRaw = env['IMAGEGEN_OFFLINE_FAILURE_CLASSES'];
  let failureClasses: ErrorClass[] | undefined;
  if (classesRaw) {
    const names = classesRaw.split(',').map((c) => c.trim());
    const bad = names.filter((c) => !isErrorClass(c));
    if (bad.length > 0) throw new ConfigError('IMAGEGEN_OFFLINE_FAILURE_CLASSES', `unknown class ${bad.join(', ')}; known: ${ERROR_CLASSES.join(', ')}`);
    failureClasses = names.filter(isErrorClass);
  }
  const replacements = env['IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE'];
  const logLevel = env['IMAGEGEN_LOG_LEVEL'] || 'info';
  const logLevels = [...Object.keys(pino.levels.values), 'silent'];
  // pino throws "unknown level" (with a stack) when the logger is built; say it here instead.
  if (!logLevels.includes(logLevel)) throw new ConfigError('IMAGEGEN_LOG_LEVEL', `must be one of ${logLevels.join(', ')}, got ${JSON.stringify(logLevel)}`);

  return hideConfigSecrets({
    dataDir,
    databaseUrl: env['DATABASE_URL'] || undefined,
    storage: hideStorageSecrets(storage),
    provider: providerRaw,
    gemini: hideGeminiKey({
      apiKey,
      model: env['GEMINI_MODEL'] || 'gemini-2.5-flash-image',
      baseUrl: env['GEMINI_BASE_URL'] || undefined,
      timeoutMs: int(env, 'GEMINI_TIMEOUT_MS', 60_000, 1, MAX_TIMER_MS),
    }),
    offline: Object.freeze({
      latencyMs: int(env, 'IMAGEGEN_OFFLINE_LATENCY_MS', 0, 0, MAX_TIMER_MS),
      jitterMs: int(env, 'IMAGEGEN_OFFLINE_JITTER_MS', 0, 0, MAX_TIMER_MS),
      failureRate: fraction(env, 'IMAGEGEN_OFFLINE_FAILURE_RATE', 0),
      failureClasses,
      seed: int(env, 'IMAGEGEN_OFFLINE_SEED', 0, -(2 ** 31), 2 ** 31),
    }),
    engine: Object.freeze({
      stageConcurrency: int(env, 'IMAGEGEN_STAGE_CONCURRENCY', Math.min(4, globalConcurrency), 1, 1000),
      globalConcurrency,
      maxAttemptsPerSlot: int(env, 'IMAGEGEN_MAX_ATTEMPTS_PER_SLOT', 5, 1, 100),
      maxReplacementsPerStage: replacements ? int(env, 'IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE', 0, 0) : undefined,
      attemptTimeoutMs: int(env, 'IMAGEGEN_ATTEMPT_TIMEOUT_MS', 120_000, 1, MAX_TIMER_MS),
      backoffBaseMs: int(env, 'IMAGEGEN_BACKOFF_BASE_MS', 1000, 0, MAX_TIMER_MS),
      backoffMaxMs: int(env, 'IMAGEGEN_BACKOFF_MAX_MS', 30_000, 0, MAX_TIMER_MS),
      maxRetryAfterMs: int(env, 'IMAGEGEN_MAX_RETRY_AFTER_MS', 120_000, 0, MAX_TIMER_MS),
    }),
    pricePerImage: int(env, 'IMAGEGEN_PRICE_PER_IMAGE', 1, 0),
    maxQuantity: int(env, 'IMAGEGEN_MAX_QUANTITY', 1000, 1),
    webpQuality: int(env, 'IMAGEGEN_WEBP_QUALITY', 80, 1, 100),
    progressIntervalMs: int(env, 'IMAGEGEN_PROGRESS_INTERVAL_MS', 250, 0, MAX_TIMER_MS),
    logLevel,
    workerJobs: int(env, 'IMAGEGEN_WORKER_JOBS', 2, 1, 100),
    shutdownGraceMs: int(env, 'IMAGEGEN_SHUTDOWN_GRACE_MS', 30_000, 0, MAX_TIMER_MS),
    // pg-boss refuses an expiry of 24 hours or more (and it stays far below the 2^31-1 ms timer limit).
    queueExpireSeconds: int(env, 'IMAGEGEN_QUEUE_EXPIRE_SECONDS', 600, 1, MAX_QUEUE_EXPIRE_SECONDS),
    maxCrashResumes: int(env, 'IMAGEGEN_MAX_CRASH_RESUMES', 5, 1, 1000),
    pgliteTemplateDir: pgliteTemplateDirOf(env),
  });
}
