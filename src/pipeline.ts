import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import type { PipelineConfig } from './config.js';
import type { WebpCodec } from './adapters/image-codec.js';
import type { ImageThread } from './adapters/image-thread-link.js';
import type { BatchGenerator, ImageGenerator } from './domain/ports.js';
import { withPrintedForm } from './domain/hide-secrets.js';
import { lockDataDir, openDatabase, type Database } from './db/index.js';
import { AdaptiveConcurrencyLimiter } from './engine/adaptive-concurrency-limiter.js';
import { pricingFor, type AttemptPricing } from './domain/price-table.js';
import { FolderObjectStore } from './sinks/folder-object-store.js';
import type { ObjectStore } from './sinks/object-store.js';

/** Every client a process uses, built once, passed explicitly. */
export interface Pipeline {
  readonly config: PipelineConfig;
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
  /** The provider's batch API, for stages of `mode: "batch"` (none: a host's own generator came without one). */
  readonly batches: BatchGenerator | undefined;
  /** One global limit for every job of this process (one API key). */
  readonly limiter: AdaptiveConcurrencyLimiter;
  readonly logger: Logger;
  /** The generator's model under the configured prices (`config.prices`): attempt costs and the spend cap. */
  readonly pricing: AttemptPricing;
  /** The WebP conversion of deliveries, in the image thread (`ThreadedWebpCodec`); none: `toWebp` in the calling thread. */
  readonly codec: WebpCodec | undefined;
  close(): Promise<void>;
}

/** Parts a host may supply instead of the configured defaults (its own store, generator or logger). */
export interface PipelineOverrides {
  readonly logger?: Logger;
  readonly store?: ObjectStore;
  readonly generator?: ImageGenerator;
  /** The batch API beside a host's `generator` (with `generator` given and this not: no batch stages). */
  readonly batches?: BatchGenerator;
  /**
   * Where the embedded database runs when `config.pgliteThread` leaves it unset: a thread of
   * its own (default true: the event loop stays free for a job) or the calling thread (false:
   * a command of a few queries starts sooner without a second Node environment).
   */
  readonly pgliteThread?: boolean;
  /** Where PostgreSQL's client runs when `config.pgThread` leaves it unset (as `pgliteThread`; default true). */
  readonly pgThread?: boolean;
  /**
   * Whether the image thread is made when `config.imageThread` leaves it unset (default true;
   * false: a command that delivers no image skips loading its parts).
   */
  readonly imageThread?: boolean;
  /** The embedded database's `shared_buffers` (see `DatabaseOptions.pgliteSharedBuffers`). Default 16 MB. */
  readonly pgliteSharedBuffers?: string;
}

/** Builds a logger that never prints secrets: API keys and image bytes are redacted. */
export function createLogger(level: string, destination: pino.DestinationStream = pino.destination(2)): Logger {
  return pino(
    {
      level,
      base: undefined,
      // `authorization`: the service's bearer tokens, should a request's headers ever be logged (Fastify's own request log leaves them out).
      redact: {
        paths: ['apiKey', '*.apiKey', 'config.apiKey', 'headers["x-goog-api-key"]', 'headers.authorization', 'req.headers.authorization', 'request.headers.authorization', 'bytes', '*.bytes', 'data', '*.data'],
        censor: '[redacted]',
      },
    },
    destination,
  );
}

/**
 * The composition root: opens the database (running migrations), the object store
 * and the generator the configuration names. The only place that builds clients.
 */
export async function openPipeline(config: PipelineConfig, overrides: PipelineOverrides = {}): Promise<Pipeline> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  let dataDir: string | undefined;
  let unlock = () => {};
  if (!config.databaseUrl) {
    dataDir = join(config.dataDir, 'db');
    mkdirSync(dataDir, { recursive: true });
    unlock = lockDataDir(join(config.dataDir, 'db.lock'));
  }
  let database: Database;
  try {
    database = await openDatabase({ databaseUrl: config.databaseUrl, dataDir, pgliteTemplateDir: config.pgliteTemplateDir, pgliteThread: config.pgliteThread ?? overrides.pgliteThread ?? true,
      pgThread: config.pgThread ?? overrides.pgThread ?? true,
      pgliteSharedBuffers: overrides.pgliteSharedBuffers,
    });
  } catch (error) {
    unlock();
    throw error;
  }
  const gemini = config.provider === 'gemini' && overrides.generator === undefined ? geminiSettingsOf(config) : undefined;
  // The image thread: the per-image work off the event loop (the provider's calls, the WebP
  // conversion, the folder store's writes), unless IMAGEGEN_IMAGE_THREAD=off or this runs
  // from TypeScript sources (its script is compiled JavaScript). It starts with the first
  // image, not here.
  const imageThread = (config.imageThread ?? overrides.imageThread ?? true) ? await imageThreadOf(gemini) : undefined;
  let store: ObjectStore;
  let destroyStore = () => {};
  if (overrides.store) store = overrides.store;
  else if (config.storage.kind === 'folder') store = new FolderObjectStore({ root: config.storage.root, writer: imageThread });
  else {
    // SDKs are loaded only when configured: the AWS SDK and @google/genai take a large
    // share of a CLI start that never uses them.
    const { S3ObjectStore } = await import('./sinks/s3-object-store.js');
    const s3 = new S3ObjectStore({
      bucket: config.storage.bucket,
      region: config.storage.region,
      ...(config.storage.endpoint ? { endpoint: config.storage.endpoint } : {}),
      forcePathStyle: config.storage.forcePathStyle,
      ...(config.storage.credentials ? { credentials: config.storage.credentials } : {}),
    });
    store = s3;
    destroyStore = () => s3.destroy();
  }
  const codec = imageThread ? new (await import('./adapters/threaded-webp-codec.js')).ThreadedWebpCodec(imageThread) : undefined;
  const { generator, batches } = overrides.generator !== undefined ? { generator: overrides.generator, batches: overrides.batches } : await providerOf(config, gemini, imageThread);
  const limiter = new AdaptiveConcurrencyLimiter({ max: config.engine.globalConcurrency });
  // A host's generator without a model is priced as unknown: costs null, a job with a cap starts nothing.
  const pricing = pricingFor(config.prices, generator.model ?? '(unknown model)');
  if (!pricing.priced) {
    logger.warn({ model: pricing.model }, 'the model has no price in the price table (IMAGEGEN_PRICES): attempt costs are unknown and a job with maxCostUsd starts no attempt');
  }
  let closed = false;
  // Printed (console.log, JSON.stringify, pino) as its parts, each of which hides its own secrets.
  return withPrintedForm('Pipeline', {
    config,
    database,
    store,
    generator,
    batches,
    codec,
    limiter,
    logger,
    pricing,
    async close() {
      if (closed) return;
      closed = true;
      destroyStore();
      try {
        await imageThread?.close();
        await database.close();
      } finally {
        unlock();
      }
    },
  }, () => ({ config, database, store, generator, limiter: { max: limiter.max } }));
}

/** The Gemini adapter's settings from the configuration (the batch API takes them without `vertex`). */
function geminiSettingsOf(config: PipelineConfig) {
  return {
    apiKey: config.gemini.apiKey ?? '',
    ...(config.gemini.model ? { model: config.gemini.model } : {}),
    ...(config.gemini.timeoutMs !== undefined ? { timeoutMs: config.gemini.timeoutMs } : {}),
    ...(config.gemini.baseUrl ? { baseUrl: config.gemini.baseUrl } : {}),
    ...(config.gemini.vertex ? { vertex: config.gemini.vertex } : {}),
  };
}

/** The image thread, with the Gemini adapter's settings when it generates; none where its compiled script is not. */
async function imageThreadOf(gemini: ReturnType<typeof geminiSettingsOf> | undefined): Promise<ImageThread | undefined> {
  const { ImageThread, imageThreadEntry } = await import('./adapters/image-thread-link.js');
  const entry = imageThreadEntry();
  return entry === undefined ? undefined : new ImageThread({ gemini, entry });
}

/** The generator and the batch API the configuration names (SDKs loaded only when configured). */
async function providerOf(config: PipelineConfig, gemini: ReturnType<typeof geminiSettingsOf> | undefined, thread: ImageThread | undefined): Promise<{ generator: ImageGenerator; batches: BatchGenerator | undefined }> {
  if (gemini !== undefined) {
    // In the image thread when there is one; else in this thread.
    const generator = thread?.generates
      ? new (await import('./adapters/threaded-image-generator.js')).ThreadedImageGenerator({ thread })
      : new (await import('./adapters/gemini-image-generator.js')).GeminiImageGenerator(gemini);
    // Vertex AI batches read from and write to Cloud Storage or BigQuery: not supported.
    const { vertex, ...client } = gemini;
    const batches = vertex ? undefined : new (await import('./adapters/gemini-batch-generator.js')).GeminiBatchGenerator(client);
    return { generator, batches };
  }
  const { OfflineImageGenerator, OfflineBatchGenerator } = await import('./adapters/offline-image-generator.js');
  const generator = new OfflineImageGenerator({
    latencyMs: config.offline.latencyMs,
    jitterMs: config.offline.jitterMs,
    failureRate: config.offline.failureRate,
    seed: config.offline.seed,
    ...(config.offline.failureClasses ? { failureClasses: config.offline.failureClasses } : {}),
  });
  return { generator, batches: new OfflineBatchGenerator(generator, config.offline.batchMs !== undefined ? { completeAfterMs: config.offline.batchMs } : {}) };
}

/** Engine settings from the configuration. */
export function engineOptionsOf(config: PipelineConfig) {
  return {
    stageConcurrency: config.engine.stageConcurrency,
    maxAttemptsPerSlot: config.engine.maxAttemptsPerSlot,
    maxSafetyBlocksPerStage: config.engine.maxSafetyBlocksPerStage,
    ...(config.engine.maxReplacementsPerStage !== undefined ? { maxReplacementsPerStage: config.engine.maxReplacementsPerStage } : {}),
    attemptTimeoutMs: config.engine.attemptTimeoutMs,
    backoff: { baseMs: config.engine.backoffBaseMs, maxMs: config.engine.backoffMaxMs, maxRetryAfterMs: config.engine.maxRetryAfterMs },
    webpQuality: config.webpQuality,
    progressIntervalMs: config.progressIntervalMs,
    graceMs: config.shutdownGraceMs,
    maxCrashResumes: config.maxCrashResumes,
    leaseTtlMs: config.leaseTtlMs,
    fairShare: config.fleet.fairShare,
    batchPolling: { firstMs: config.batch.pollMs, maxMs: Math.max(config.batch.pollMs, config.batch.pollMaxMs) },
  };
}

/**
 * Which provider limit a process shares with the fleet: a hash of the provider, its
 * endpoint, model and API key (never the key itself). Workers with the same one call the
 * same quota.
 */
export function providerKeyOf(config: PipelineConfig): string {
  if (config.provider === 'offline') return 'offline';
  const { baseUrl, model, apiKey, vertex } = config.gemini;
  const account = vertex ? [`vertex:${vertex.project}:${vertex.location}`] : [];
  return 'gemini:' + createHash('sha256').update([baseUrl ?? '', model ?? '', apiKey ?? '', ...account].join('\0')).digest('hex').slice(0, 16);
}
