import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import pino from 'pino';
import { DEFAULT_WEBP_QUALITY } from './adapters/image-codec.js';
import { boolOf, ConfigError, fractionOf, intOf, type ConfigEnv } from './config-parse.js';
import { ERROR_CLASSES, isErrorClass, type ErrorClass } from './domain/error-class.js';
import { hideField, REDACTED, redactUrlPassword, withSecretsHidden } from './domain/hide-secrets.js';
import { DEFAULT_JOB_SPEC_LIMITS } from './domain/job-spec.js';
import { DEFAULT_PRICES, parsePriceTable, PriceTableError, type PriceTable } from './domain/price-table.js';
import { DEFAULT_BACKOFF, MAX_TIMER_MS } from './engine/full-jitter-backoff.js';
import { DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE } from './engine/stage-ledger.js';
import { DEFAULT_BATCH_POLLING } from './operators/fill-batch-rounds.js';
import { DEFAULT_ENGINE_OPTIONS, defaultStageConcurrency } from './streams/engine.js';
import { DEFAULT_PRICE_PER_IMAGE } from './jobs/submit-job.js';
import { DEFAULT_RUN_OPTIONS } from './streams/run-job.js';
import { DEFAULT_WEBHOOK_OPTIONS } from './sinks/webhook-dispatcher.js';
import { DEFAULT_HTTP_OPTIONS, DEFAULT_PAGE_TTLS, tokenSha256 } from './http/defaults.js';

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
  readonly gemini: {
    readonly apiKey: string | undefined;
    readonly model: string | undefined;
    readonly baseUrl: string | undefined;
    readonly timeoutMs: number | undefined;
    /** Vertex AI (`GEMINI_VERTEX_PROJECT` + `GEMINI_VERTEX_LOCATION`, application default credentials) instead of the Gemini API key. */
    readonly vertex: { readonly project: string; readonly location: string } | undefined;
  };
  /** Fault injection of the offline generator; unset fields are off (0). */
  readonly offline: {
    readonly latencyMs: number | undefined;
    readonly jitterMs: number | undefined;
    readonly failureRate: number | undefined;
    readonly failureClasses: readonly ErrorClass[] | undefined;
    readonly seed: number | undefined;
    /** How long an offline batch runs before it succeeds (`OfflineBatchGenerator`), ms. */
    readonly batchMs: number | undefined;
  };
  /** Batch mode: the first look at a running batch, then doubling up to the most (`fillBatchRounds`), ms. */
  readonly batch: { readonly pollMs: number; readonly pollMaxMs: number };
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
    /** Safety blocks (`safety_blocked`) in a row after which a stage stops (shortfall `safety_blocked`). */
    readonly maxSafetyBlocksPerStage: number;
  };
  /** Credits one delivered image costs. */
  readonly pricePerImage: number;
  /**
   * Provider prices per model (USD): what each attempt's answer is estimated to cost and
   * what a job's `maxCostUsd` is checked against. `DEFAULT_PRICES` (list prices, dated)
   * with the models `IMAGEGEN_PRICES` gives replaced.
   */
  readonly prices: PriceTable;
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
  /**
   * Whether the embedded database runs in a thread of its own, off the event loop
   * (`IMAGEGEN_PGLITE_THREAD` `on`/`off`). Unset: the program decides (`openPipeline`: in a
   * thread; the CLI's commands that run no job: in the main thread, which starts sooner).
   */
  readonly pgliteThread: boolean | undefined;
  /**
   * Whether PostgreSQL's client (`pg`'s pool: the statements' socket I/O and the rows' parsing)
   * runs in a thread of its own, off the event loop (`IMAGEGEN_PG_THREAD` `on`/`off`). Unset:
   * as for `pgliteThread` (a thread where jobs run; the main thread for the CLI's other commands).
   */
  readonly pgThread: boolean | undefined;
  /**
   * Whether the per-image work (the Gemini adapter's calls, the WebP conversion of deliveries)
   * runs in the image thread, off the event loop (`IMAGEGEN_IMAGE_THREAD` `on`/`off`). Unset:
   * on (where the thread's compiled script is: not from TypeScript sources).
   */
  readonly imageThread: boolean | undefined;
  /**
   * The scheduling policy the project's own programs (the `imagegen` CLI, `npm run demo`) give
   * their helper threads where they run jobs (`IMAGEGEN_HELPER_THREADS`): `batch` (unset, on
   * Linux: `SCHED_BATCH`, a woken helper never preempts the event loop; `src/cli/helper-threads.ts`)
   * or `normal` (left as they start). The library never changes a thread's policy.
   */
  readonly helperThreads: 'batch' | 'normal';
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
  /** `GET /metrics` of `imagegen worker` (`--metrics-port`, `--metrics-host`). */
  readonly metrics: {
    /** Unset: not served. 0: a free port the system picks (the worker logs its address). */
    readonly port: number | undefined;
    readonly host: string;
  };
  /** `imagegen serve`: the HTTP API (src/http). */
  readonly http: HttpConfig;
  /** Signed webhooks: the outbox's dispatcher (`WebhookDispatcher`) and the URL rules at submit. */
  readonly webhooks: WebhookConfig;
}

/** `IMAGEGEN_WEBHOOK_*`: how webhooks are sent, retried and which URLs are allowed. */
export interface WebhookConfig {
  /** One attempt's timeout, in ms. */
  readonly timeoutMs: number;
  /** How long after its event (or its redelivery) a delivery is retried before it is `failed`, in ms. */
  readonly retryWindowMs: number;
  /** Full-jitter backoff between attempts, in ms. */
  readonly backoffBaseMs: number;
  readonly backoffMaxMs: number;
  /** How often a dispatcher reads the outbox when no notification came, in ms. */
  readonly pollMs: number;
  /** Sends in flight per process. */
  readonly concurrency: number;
  /** `http://` to this machine and private addresses allowed (tests, development). */
  readonly allowLocal: boolean;
}

/** A bearer token of `IMAGEGEN_API_TOKENS`, by its SHA-256: the token itself is never kept. */
export interface ApiToken {
  /** SHA-256 of the token, hex (`tokenSha256`). */
  readonly sha256: string;
  /** The user the token acts as. */
  readonly userId: string;
}

/** The service's settings. The tokens are kept as SHA-256 hashes only, and print as counts. */
export interface HttpConfig {
  /** `--port`, else `IMAGEGEN_HTTP_PORT`; 0: a free port the system picks (the service logs its address). */
  readonly port: number;
  /** `--host`, else `IMAGEGEN_HTTP_HOST`. */
  readonly host: string;
  /** Largest request body (a job with base64 images, an upload); larger: 413. */
  readonly bodyLimitBytes: number;
  /** Requests per minute per token; more: 429. */
  readonly rateLimitPerMinute: number;
  /** Event streams one token may hold open; more: 429. */
  readonly maxStreamsPerToken: number;
  /** Heartbeat comment interval of an idle event stream. */
  readonly heartbeatMs: number;
  /** `IMAGEGEN_API_TOKENS`: user tokens. */
  readonly tokens: readonly ApiToken[];
  /** `IMAGEGEN_ADMIN_TOKENS`: SHA-256 (hex) of admin tokens (an admin may act for any user and grant credits). */
  readonly adminTokens: readonly string[];
  /** `IMAGEGEN_LINK_TTL_SECONDS`: how long a live-page link printed by `--open` can be opened. */
  readonly linkTtlSeconds: number;
  /** `IMAGEGEN_PAGE_SESSION_SECONDS`: how long a browser stays signed in to the live page. */
  readonly pageSessionSeconds: number;
  /** `IMAGEGEN_PUBLIC_URL`: where people reach `imagegen serve` (printed links); default `http://<host>:<port>`. */
  readonly publicUrl: string;
}

/** Values given on the command line; they win over the environment. */
export interface ConfigOverrides {
  readonly dataDir?: string | undefined;
  readonly provider?: string | undefined;
  readonly concurrency?: string | number | undefined;
  readonly metricsPort?: string | undefined;
  readonly metricsHost?: string | undefined;
  /** `imagegen serve --port`, `--host`. */
  readonly httpPort?: string | undefined;
  readonly httpHost?: string | undefined;
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

/** `on` -> true, `off` -> false, unset -> undefined. */
function onOffOf(value: 'on' | 'off' | undefined): boolean | undefined {
  return value === undefined ? undefined : value === 'on';
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
 * | `GEMINI_VERTEX_PROJECT`, `GEMINI_VERTEX_LOCATION` | unset: the Gemini API with `GEMINI_API_KEY`; both set: Vertex AI with application default credentials (not with a key) |
 * | `IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE` | 3 (`StageLedger`: safety blocks in a row that stop a stage) |
 * | `IMAGEGEN_CONCURRENCY`, `IMAGEGEN_STAGE_CONCURRENCY` | 8, min(4, global) (`runEngine`) |
 * | `IMAGEGEN_MAX_ATTEMPTS_PER_SLOT`, `IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE` | 5, max(10, quantity) (`runEngine`) |
 * | `IMAGEGEN_ATTEMPT_TIMEOUT_MS` | 120000 (`runEngine`) |
 * | `IMAGEGEN_BACKOFF_BASE_MS`, `IMAGEGEN_BACKOFF_MAX_MS`, `IMAGEGEN_MAX_RETRY_AFTER_MS` | 1000, 30000, 120000 (`fullJitterBackoff`) |
 * | `IMAGEGEN_PRICE_PER_IMAGE`, `IMAGEGEN_MAX_QUANTITY` | 1, 1000 (`parseJobSpec`: the spec's limit) |
 * | `IMAGEGEN_PRICES` | `DEFAULT_PRICES` (list prices at `DEFAULT_PRICES_AS_OF`); a JSON object of model -> prices, or `@/path/file` holding one (`parsePriceTable`) |
 * | `IMAGEGEN_OFFLINE_LATENCY_MS`, `_JITTER_MS`, `_FAILURE_RATE`, `_FAILURE_CLASSES`, `_SEED` | 0, 0, 0, transient mix, 0 (`OfflineImageGenerator`) |
 * | `IMAGEGEN_OFFLINE_BATCH_MS` | 1000 (`OfflineBatchGenerator`: how long an offline batch runs) |
 * | `IMAGEGEN_BATCH_POLL_MS`, `IMAGEGEN_BATCH_POLL_MAX_MS` | 5000, 120000 (`fillBatchRounds`: a running batch is polled after 5 s, then doubling up to 2 min) |
 * | `IMAGEGEN_WEBP_QUALITY` | 80 (`toWebp`) |
 * | `IMAGEGEN_PROGRESS_INTERVAL_MS`, `IMAGEGEN_SHUTDOWN_GRACE_MS`, `IMAGEGEN_MAX_CRASH_RESUMES` | 250, 30000, 5 (`runStoredJob`) |
 * | `IMAGEGEN_WORKER_JOBS` | 2 (`runWorker`) |
 * | `IMAGEGEN_LOG_LEVEL`, `IMAGEGEN_QUEUE_EXPIRE_SECONDS` | `info`, 600 (only how long a queue message waits for a lease claim) |
 * | `IMAGEGEN_LEASE_TTL_SECONDS` | 15 (`runStoredJob`: a lease not renewed this long is a dead process's) |
 * | `IMAGEGEN_WORKER_NAME` | the host name |
 * | `IMAGEGEN_PROVIDER_MAX_INFLIGHT`, `IMAGEGEN_PROVIDER_MAX_PER_MINUTE`, `IMAGEGEN_MAX_INFLIGHT_PER_USER` | unset (`FleetLimiter`) |
 * | `IMAGEGEN_PROVIDER_LIMIT_SCOPE`, `IMAGEGEN_FAIR_SHARE` | `fleet`, `on` (`process`, `off`: the old behaviour, for comparisons) |
 * | `IMAGEGEN_METRICS_PORT` (`--metrics-port`), `IMAGEGEN_METRICS_HOST` (`--metrics-host`) | unset: no metrics server; `127.0.0.1` |
 * | `IMAGEGEN_HTTP_PORT` (`--port`), `IMAGEGEN_HTTP_HOST` (`--host`) | 8080, `127.0.0.1` (`DEFAULT_HTTP_OPTIONS`, src/http) |
 * | `IMAGEGEN_HTTP_BODY_LIMIT_BYTES`, `IMAGEGEN_HTTP_RATE_LIMIT`, `IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN`, `IMAGEGEN_HTTP_HEARTBEAT_MS` | 30 MiB, 600 per minute, 8, 15000 (`DEFAULT_HTTP_OPTIONS`) |
 * | `IMAGEGEN_API_TOKENS`, `IMAGEGEN_ADMIN_TOKENS` | none (`token=userId,...` or `@/path/file`; `serve` needs one) |
 * | `IMAGEGEN_PUBLIC_URL`, `IMAGEGEN_LINK_TTL_SECONDS`, `IMAGEGEN_PAGE_SESSION_SECONDS` | `http://<host>:<port>`, 3600, 43200 (`DEFAULT_PAGE_TTLS`, src/http) |
 * | `IMAGEGEN_WEBHOOK_TIMEOUT_MS`, `IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS` | 10000, 86400 (24 h) (`DEFAULT_WEBHOOK_OPTIONS`, `WebhookDispatcher`) |
 * | `IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS`, `IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS` | 5000, 3600000 (`DEFAULT_WEBHOOK_OPTIONS`) |
 * | `IMAGEGEN_WEBHOOK_POLL_MS`, `IMAGEGEN_WEBHOOK_CONCURRENCY` | 1000, 8 (`DEFAULT_WEBHOOK_OPTIONS`) |
 * | `IMAGEGEN_WEBHOOK_ALLOW_LOCAL` | false: `https` to public addresses only (`1`: also `http://localhost`, private addresses; tests) |
 * | `IMAGEGEN_PGLITE_TEMPLATE_DIR` | `$XDG_CACHE_HOME/imagegen-pipeline` or `~/.cache/imagegen-pipeline` (`off`: none) |
 * | `IMAGEGEN_IMAGE_THREAD` | unset / `on`: the Gemini adapter's calls and the WebP conversion run in the image thread (`ImageThread`; from TypeScript sources, in the calling thread); `off`: in the calling thread |
 * | `IMAGEGEN_PGLITE_THREAD` | unset: a thread of its own for the embedded database where jobs run (`run`, `worker`, `serve`, `submit`, the library), the main thread for the CLI's other commands; `on` / `off`: always / never |
 * | `IMAGEGEN_PG_THREAD` | the same for PostgreSQL's client (`pg`'s pool, `PgRemotePool`) |
 * | `IMAGEGEN_HELPER_THREADS` | unset / `batch`: the `imagegen` program's and the demo's helper threads, where they run jobs, under Linux's `SCHED_BATCH` (never preempting the event loop); `normal`: left alone (the library never changes them) |
 *
 * Durations in ms are at most 2^31-1 (Node's timer limit: a longer delay fires after 1 ms).
 */
export function loadConfig(env: ConfigEnv = process.env, overrides: ConfigOverrides = {}): PipelineConfig {
  // An empty flag value is a mistake (a variable that expanded to nothing), not "the current folder".
  if (overrides.dataDir !== undefined && overrides.dataDir.trim() === '') throw new ConfigError('--data-dir', 'must be a folder path, got ""');
  const dataDir = resolve(overrides.dataDir ?? (env['IMAGEGEN_DATA_DIR'] || './.imagegen'));
  const apiKey = env['GEMINI_API_KEY'] || undefined;
  const vertex = vertexOf(env, apiKey);
  const providerRaw = overrides.provider ?? (env['IMAGEGEN_PROVIDER'] || (apiKey || vertex ? 'gemini' : 'offline'));
  if (providerRaw !== 'offline' && providerRaw !== 'gemini') {
    throw new ConfigError(overrides.provider !== undefined ? '--provider' : 'IMAGEGEN_PROVIDER', `must be offline or gemini, got ${JSON.stringify(providerRaw)}`);
  }
  if (providerRaw === 'gemini' && !apiKey && !vertex) throw new ConfigError('GEMINI_API_KEY', 'is required with --provider gemini (or GEMINI_VERTEX_PROJECT and GEMINI_VERTEX_LOCATION for Vertex AI)');

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
      vertex,
    }),
    offline: Object.freeze({
      latencyMs: intOf(env, 'IMAGEGEN_OFFLINE_LATENCY_MS', 0, MAX_TIMER_MS),
      jitterMs: intOf(env, 'IMAGEGEN_OFFLINE_JITTER_MS', 0, MAX_TIMER_MS),
      failureRate: fractionOf(env, 'IMAGEGEN_OFFLINE_FAILURE_RATE'),
      failureClasses: failureClassesOf(env),
      seed: intOf(env, 'IMAGEGEN_OFFLINE_SEED', -(2 ** 31), 2 ** 31),
      batchMs: intOf(env, 'IMAGEGEN_OFFLINE_BATCH_MS', 0, MAX_TIMER_MS),
    }),
    batch: Object.freeze({
      pollMs: intOf(env, 'IMAGEGEN_BATCH_POLL_MS', 1, MAX_TIMER_MS) ?? DEFAULT_BATCH_POLLING.firstMs,
      pollMaxMs: intOf(env, 'IMAGEGEN_BATCH_POLL_MAX_MS', 1, MAX_TIMER_MS) ?? DEFAULT_BATCH_POLLING.maxMs,
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
      maxSafetyBlocksPerStage: intOf(env, 'IMAGEGEN_MAX_SAFETY_BLOCKS_PER_STAGE', 1, 1000) ?? DEFAULT_MAX_SAFETY_BLOCKS_PER_STAGE,
    }),
    pricePerImage: intOf(env, 'IMAGEGEN_PRICE_PER_IMAGE', 0) ?? DEFAULT_PRICE_PER_IMAGE,
    prices: pricesOf(env),
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
    pgliteThread: onOffOf(choiceOf(env, 'IMAGEGEN_PGLITE_THREAD', ['on', 'off'] as const)),
    pgThread: onOffOf(choiceOf(env, 'IMAGEGEN_PG_THREAD', ['on', 'off'] as const)),
    imageThread: onOffOf(choiceOf(env, 'IMAGEGEN_IMAGE_THREAD', ['on', 'off'] as const)),
    helperThreads: choiceOf(env, 'IMAGEGEN_HELPER_THREADS', ['batch', 'normal'] as const) ?? 'batch',
    leaseTtlMs: (intOf(env, 'IMAGEGEN_LEASE_TTL_SECONDS', 1, MAX_LEASE_TTL_SECONDS) ?? DEFAULT_RUN_OPTIONS.leaseTtlMs / 1000) * 1000,
    fleet: Object.freeze({
      workerName: workerNameOf(env),
      providerMaxInFlight: intOf(env, 'IMAGEGEN_PROVIDER_MAX_INFLIGHT', 1, 100_000),
      providerMaxPerMinute: intOf(env, 'IMAGEGEN_PROVIDER_MAX_PER_MINUTE', 1, 10_000_000),
      maxInFlightPerUser: intOf(env, 'IMAGEGEN_MAX_INFLIGHT_PER_USER', 1, 100_000),
      providerLimitScope: choiceOf(env, 'IMAGEGEN_PROVIDER_LIMIT_SCOPE', ['fleet', 'process'] as const) ?? 'fleet',
      fairShare: (choiceOf(env, 'IMAGEGEN_FAIR_SHARE', ['on', 'off'] as const) ?? 'on') === 'on',
    }),
    metrics: Object.freeze({
      port: portOf(env, 'IMAGEGEN_METRICS_PORT', '--metrics-port', overrides.metricsPort),
      host: overrides.metricsHost ?? (env['IMAGEGEN_METRICS_HOST'] || DEFAULT_METRICS_HOST),
    }),
    http: httpOf(env, overrides),
    webhooks: webhooksOf(env),
  });
}

/**
 * `GEMINI_VERTEX_PROJECT` and `GEMINI_VERTEX_LOCATION`: Vertex AI as a deliberate choice
 * (both, or neither). Not with `GEMINI_API_KEY`: which endpoint gets the requests is said
 * in one way only. The SDK's own `GOOGLE_GENAI_USE_VERTEXAI`, `GOOGLE_CLOUD_PROJECT`,
 * `GOOGLE_GEMINI_BASE_URL`... change nothing (the adapter pins them).
 */
function vertexOf(env: ConfigEnv, apiKey: string | undefined): { readonly project: string; readonly location: string } | undefined {
  const project = env['GEMINI_VERTEX_PROJECT']?.trim() || undefined;
  const location = env['GEMINI_VERTEX_LOCATION']?.trim() || undefined;
  if (project === undefined && location === undefined) return undefined;
  if (project === undefined) throw new ConfigError('GEMINI_VERTEX_PROJECT', 'is required with GEMINI_VERTEX_LOCATION (Vertex AI needs both)');
  if (location === undefined) throw new ConfigError('GEMINI_VERTEX_LOCATION', 'is required with GEMINI_VERTEX_PROJECT (e.g. us-central1, global)');
  if (!/^[a-z][a-z0-9-]{4,61}[a-z0-9]$/.test(project)) throw new ConfigError('GEMINI_VERTEX_PROJECT', `must be a Google Cloud project id, got ${JSON.stringify(project)}`);
  if (!/^[a-z][a-z0-9-]{1,40}$/.test(location)) throw new ConfigError('GEMINI_VERTEX_LOCATION', `must be a location such as us-central1 or global, got ${JSON.stringify(location)}`);
  if (apiKey !== undefined) throw new ConfigError('GEMINI_VERTEX_PROJECT', 'set GEMINI_API_KEY (Gemini API) or GEMINI_VERTEX_PROJECT/GEMINI_VERTEX_LOCATION (Vertex AI), not both');
  return Object.freeze({ project, location });
}

/** Longest `IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS`: 30 days. */
export const MAX_WEBHOOK_RETRY_WINDOW_SECONDS = 30 * 24 * 60 * 60;

/** `IMAGEGEN_WEBHOOK_*` (see {@link WebhookConfig}); defaults `DEFAULT_WEBHOOK_OPTIONS` (src/sinks/webhook-dispatcher.ts). */
function webhooksOf(env: ConfigEnv): WebhookConfig {
  const windowSeconds = intOf(env, 'IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS', 1, MAX_WEBHOOK_RETRY_WINDOW_SECONDS);
  const backoffBaseMs = intOf(env, 'IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS', 1, MAX_TIMER_MS) ?? DEFAULT_WEBHOOK_OPTIONS.backoffBaseMs;
  const backoffMaxMs = intOf(env, 'IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS', 1, MAX_TIMER_MS) ?? Math.max(backoffBaseMs, DEFAULT_WEBHOOK_OPTIONS.backoffMaxMs);
  if (backoffMaxMs < backoffBaseMs) {
    throw new ConfigError('IMAGEGEN_WEBHOOK_BACKOFF_MAX_MS', `must be at least IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS (${backoffBaseMs}), got ${backoffMaxMs}`);
  }
  return Object.freeze({
    timeoutMs: intOf(env, 'IMAGEGEN_WEBHOOK_TIMEOUT_MS', 1, 120_000) ?? DEFAULT_WEBHOOK_OPTIONS.timeoutMs,
    retryWindowMs: windowSeconds === undefined ? DEFAULT_WEBHOOK_OPTIONS.retryWindowMs : windowSeconds * 1000,
    backoffBaseMs,
    backoffMaxMs,
    pollMs: intOf(env, 'IMAGEGEN_WEBHOOK_POLL_MS', 10, MAX_TIMER_MS) ?? DEFAULT_WEBHOOK_OPTIONS.pollMs,
    concurrency: intOf(env, 'IMAGEGEN_WEBHOOK_CONCURRENCY', 1, 1000) ?? DEFAULT_WEBHOOK_OPTIONS.concurrency,
    allowLocal: boolOf(env, 'IMAGEGEN_WEBHOOK_ALLOW_LOCAL', false),
  });
}

/** Where `GET /metrics` listens unless told otherwise: this machine only. */
export const DEFAULT_METRICS_HOST = '127.0.0.1';

/** A TCP port in 0..65535 (0: any free one) from the flag, else the variable; undefined when neither is set. */
function portOf(env: ConfigEnv, variable: string, flag: string, flagValue: string | undefined): number | undefined {
  // Decimal digits only: Number() would read "0x10" as 16 and " " as 0.
  const [name, raw] = flagValue !== undefined ? [flag, flagValue] : [variable, env[variable]];
  if (raw === undefined || (raw === '' && name === variable)) return undefined;
  if (!/^[0-9]{1,5}$/.test(raw) || Number(raw) > 65_535) throw new ConfigError(name, `must be a port number in 0..65535 (0: any free port), got ${JSON.stringify(raw)}`);
  return Number(raw);
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

/** The service's settings (`imagegen serve`); see {@link HttpConfig}. */
function httpOf(env: ConfigEnv, overrides: ConfigOverrides): HttpConfig {
  if (overrides.httpHost !== undefined && overrides.httpHost.trim() === '') throw new ConfigError('--host', 'must be a host name or address, got ""');
  const tokens = apiTokensOf(env);
  const adminTokens = adminTokensOf(env);
  let http: HttpConfig = {
    port: portOf(env, 'IMAGEGEN_HTTP_PORT', '--port', overrides.httpPort) ?? DEFAULT_HTTP_OPTIONS.port,
    host: overrides.httpHost ?? (env['IMAGEGEN_HTTP_HOST'] || DEFAULT_HTTP_OPTIONS.host),
    bodyLimitBytes: intOf(env, 'IMAGEGEN_HTTP_BODY_LIMIT_BYTES', 1024, 1024 ** 3) ?? DEFAULT_HTTP_OPTIONS.bodyLimitBytes,
    rateLimitPerMinute: intOf(env, 'IMAGEGEN_HTTP_RATE_LIMIT', 1, 1_000_000) ?? DEFAULT_HTTP_OPTIONS.rateLimitPerMinute,
    maxStreamsPerToken: intOf(env, 'IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN', 1, 10_000) ?? DEFAULT_HTTP_OPTIONS.maxStreamsPerToken,
    heartbeatMs: intOf(env, 'IMAGEGEN_HTTP_HEARTBEAT_MS', 1, MAX_TIMER_MS) ?? DEFAULT_HTTP_OPTIONS.heartbeatMs,
    tokens: Object.freeze(tokens),
    adminTokens: Object.freeze(adminTokens),
    linkTtlSeconds: intOf(env, 'IMAGEGEN_LINK_TTL_SECONDS', 10, 30 * 24 * 3600) ?? DEFAULT_PAGE_TTLS.linkSeconds,
    pageSessionSeconds: intOf(env, 'IMAGEGEN_PAGE_SESSION_SECONDS', 60, 30 * 24 * 3600) ?? DEFAULT_PAGE_TTLS.sessionSeconds,
    publicUrl: '',
  };
  http = { ...http, publicUrl: publicUrlOf(env, http) };
  // Hashes of weak tokens could be guessed offline: the printed form says how many there are, not which.
  return withSecretsHidden('HttpConfig', http, () => ({ ...http, tokens: `${tokens.length} token(s)`, adminTokens: `${adminTokens.length} token(s)` }));
}

/** `IMAGEGEN_PRICES`: a JSON value, or `@/path/file` holding one, over `DEFAULT_PRICES`. */
function pricesOf(env: ConfigEnv): PriceTable {
  const raw = env['IMAGEGEN_PRICES'];
  if (raw === undefined || raw.trim() === '') return DEFAULT_PRICES;
  let json = raw;
  if (raw.startsWith('@')) {
    try {
      json = readFileSync(raw.slice(1), 'utf8');
    } catch (error) {
      throw new ConfigError('IMAGEGEN_PRICES', `cannot read ${raw.slice(1)} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
    }
  }
  try {
    return parsePriceTable(json);
  } catch (error) {
    if (error instanceof PriceTableError) throw new ConfigError('IMAGEGEN_PRICES', error.message);
    throw error;
  }
}

/** `IMAGEGEN_PUBLIC_URL` (an http(s) URL, no trailing slash kept), else where `serve` listens. */
function publicUrlOf(env: ConfigEnv, http: Pick<HttpConfig, 'host' | 'port'>): string {
  const raw = env['IMAGEGEN_PUBLIC_URL'];
  if (!raw) {
    const host = http.host === '0.0.0.0' || http.host === '::' ? '127.0.0.1' : http.host.includes(':') ? `[${http.host}]` : http.host;
    return `http://${host}:${http.port}`;
  }
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigError('IMAGEGEN_PUBLIC_URL', `must be an http or https URL, got ${JSON.stringify(raw)}`);
  }
  if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    throw new ConfigError('IMAGEGEN_PUBLIC_URL', `must be an http or https URL without credentials, query or fragment, got ${JSON.stringify(raw)}`);
  }
  return url.href.replace(/\/+$/, '');
}

/** A bearer token: 16..512 characters of the RFC 6750 token alphabet, without `=` (it separates the user). */
const API_TOKEN = /^[A-Za-z0-9._~+/-]{16,512}$/;

/**
 * The entries of a token list variable: its comma-separated value, or the lines of the
 * file `@/path` names (blank lines and `#` comments skipped). Each entry comes with where
 * it is, for messages that never quote a token.
 */
function tokenEntriesOf(env: ConfigEnv, name: string): { readonly text: string; readonly at: string }[] {
  const raw = env[name];
  if (!raw) return [];
  if (raw.startsWith('@')) {
    const path = raw.slice(1);
    let content: string;
    try {
      content = readFileSync(path, 'utf8');
    } catch (error) {
      throw new ConfigError(name, `cannot read the token file ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
    }
    return content
      .split(/\r?\n/)
      .map((line, i) => ({ text: line.trim(), at: `${path} line ${i + 1}` }))
      .filter((entry) => entry.text !== '' && !entry.text.startsWith('#'));
  }
  return raw.split(',').map((text, i) => ({ text: text.trim(), at: `entry ${i + 1}` }));
}

function checkToken(name: string, at: string, token: string): void {
  if (!API_TOKEN.test(token)) {
    throw new ConfigError(name, `${at}: a token must be 16 to 512 characters of A-Z a-z 0-9 . _ ~ + / - (got ${token.length} character(s); the token is not shown)`);
  }
}

/** `IMAGEGEN_API_TOKENS`: `token=userId` pairs, hashed at once; one token names one user. */
function apiTokensOf(env: ConfigEnv): ApiToken[] {
  const name = 'IMAGEGEN_API_TOKENS';
  const byHash = new Map<string, string>();
  for (const { text, at } of tokenEntriesOf(env, name)) {
    const cut = text.indexOf('=');
    if (cut < 0) throw new ConfigError(name, `${at}: expected token=userId (no "=" found; the entry is not shown)`);
    const token = text.slice(0, cut).trim();
    const userId = text.slice(cut + 1).trim();
    checkToken(name, at, token);
    // The user id rules of a job spec's userId: the token's user owns the jobs it submits.
    if (userId === '' || userId.length > 128 || /[\u0000-\u001f\u007f]/.test(userId)) {
      throw new ConfigError(name, `${at}: the user id must be 1 to 128 characters without control characters`);
    }
    const sha256 = tokenSha256(token);
    const known = byHash.get(sha256);
    if (known !== undefined && known !== userId) throw new ConfigError(name, `${at}: the same token is given to two users (${known} and ${userId})`);
    byHash.set(sha256, userId);
  }
  return [...byHash].map(([sha256, userId]) => Object.freeze({ sha256, userId }));
}

/** `IMAGEGEN_ADMIN_TOKENS`: admin tokens, comma-separated (or `@/path/file`, one per line), hashed at once. */
function adminTokensOf(env: ConfigEnv): string[] {
  const name = 'IMAGEGEN_ADMIN_TOKENS';
  const hashes = new Set<string>();
  for (const { text, at } of tokenEntriesOf(env, name)) {
    checkToken(name, at, text);
    hashes.add(tokenSha256(text));
  }
  return [...hashes];
}

/** The AWS SDK's switch for its Node-version notice (read when an S3 client is made). */
export const AWS_SDK_NODE_NOTICE_SWITCH = 'AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED';

/**
 * Turns the AWS SDK's Node-version notice off (`AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED=true`),
 * unless the variable is set in `env` (even empty, even `false`: the user's value wins).
 * Returns whether it was set.
 *
 * Why: on Node 20 `@aws-sdk/client-s3` writes a nine-line `NodeVersionSupportWarning` to
 * stderr the first time a process makes an S3 client: every command on S3 storage (even
 * `credits grant`), and in the middle of `worker`'s and `serve`'s JSON log lines, where a log
 * collector reads it as nine lines of garbage. It is about SDK releases after January 2027
 * needing Node 22; this package pins its SDK version (package.json), so it tells a user of
 * the command nothing they can act on. A host that embeds the library decides for its own
 * process: the library sets nothing. Called by the project's own programs
 * (`tuneOwnProcess`, src/cli/own-process.ts); here because this file is the one that touches the
 * environment.
 */
export function quietAwsSdkNodeNotice(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env[AWS_SDK_NODE_NOTICE_SWITCH] !== undefined) return false;
  env[AWS_SDK_NODE_NOTICE_SWITCH] = 'true';
  return true;
}
