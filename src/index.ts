/**
 * imagegen-pipeline: image-generation pipeline jobs that deliver exactly the number
 * of images asked for, charge once per delivered image, survive crashes and flaky
 * APIs, report live progress and keep stage order.
 *
 * The public API is what a host needs: read the configuration, open a pipeline,
 * submit, run, watch and cancel jobs, read their status and results, grant and read
 * credits, and plug its own object store or image generator. Everything else (the
 * database operations, the engine's parts, the image codec) is internal and may
 * change: tests and benches import it by path.
 *
 * @example
 * const pipeline = await openPipeline(loadConfig());
 * runJob(pipeline, { spec }, engineOptionsOf(pipeline.config)).subscribe((event) => ...);
 */

// ── Configuration and the pipeline ──────────────────────────────────────────────

/** `loadConfig(env?, overrides?)`: the configuration from the environment (the README's table); a bad value is a `ConfigError` naming the variable. `envWithPresets` lays the environment over a host's own presets. */
export { loadConfig, envWithPresets, ConfigError, type PipelineConfig, type StorageConfig, type ConfigOverrides, type ConfigEnv } from './config.js';
/** `openPipeline(config, overrides?)` builds every client once (database, object store, generator, logger, the global limit); `engineOptionsOf(config)` the run options the configuration sets. */
export { openPipeline, engineOptionsOf, type Pipeline, type PipelineOverrides } from './pipeline.js';
/** The database handle a pipeline holds (`pipeline.database`), which the job and credit functions below take. */
export type { Database } from './db/index.js';

// ── Jobs: the spec, submit, run, watch, cancel, status and result ───────────────

/** `parseJobSpec(input, limits?)` checks a job spec (the source's stage payload or camelCase); a bad one is a `JobSpecError` listing every problem by field. */
export { parseJobSpec, JobSpecError, type JobSpec, type StageSpec, type JobSpecLimits, type SpecProblem } from './domain/job-spec.js';
/** The aspect ratios a stage may ask for (default `16:9`). */
export { ASPECT_RATIOS, type AspectRatio } from './domain/aspect-ratio.js';
/** `submitSpec` records a job and reserves its credits once (same `jobId` + same spec: a no-op; another spec: `JobSpecConflictError`); `importInputImage` stores a user's input image and returns its attach id; `newJobId` makes an id. */
export { submitSpec, importInputImage, newJobId, JobSpecConflictError, type SubmitDeps, type SubmitSpecOptions } from './jobs/submit-job.js';
/** `probeImage(bytes)`: an input image's type and size, which `importInputImage` records (a `corrupt_image` PipelineError when it is no image). */
export { probeImage, type ImageProbe } from './adapters/image-codec.js';
/** `runJob(pipeline, { spec }, options)` submits (or resumes) a job and runs it in this process: a cold Observable of typed events ending with `job:finished`. */
export { runJob, type RunJobInput } from './jobs/run-job.js';
/** `runStoredJob(deps, jobId, options)` runs (or resumes, or replays) a job already submitted, by id. */
export { runStoredJob, type RunJobDeps, type RunJobOptions } from './streams/run-job.js';
/** The PostgreSQL job queue (pg-boss): `submitToQueue` hands a submitted job to the workers, `runWorker` runs queued jobs until `stop$`. */
export { runWorker, submitToQueue, type WorkerOptions } from './streams/worker.js';
/** `watchJob(database, jobId)` follows a job another process runs (a snapshot, then live events); `readSnapshot` reads its state once. */
export { watchJob, readSnapshot, type JobSnapshot, type WatchedEvent } from './sources/watch-job.js';
/** `followJobEvents(database, jobId, { afterSeq })` follows a job's durable event log from any process: each logged event once, numbered (`seq`) in commit order with no gap, resumable after the last `seq` seen (an SSE `Last-Event-ID`). */
export { followJobEvents, DEFAULT_FOLLOW_POLL_MS, type FollowJobEventsOptions, type JobEventEnvelope } from './sources/job-events.js';
/** `requestCancel(database, jobId)` asks the process running a job to stop it (false when it does not exist or already ended); `readJobResult` reads a job's result as it stands. */
export { requestCancel, readJobResult, type StoredJobResult } from './db/index.js';
/** `getAttachment(database, attachId)`: an attach record (owner, storage key, content type, the slot it fills). */
export { getAttachment, type AttachmentRow } from './db/index.js';

// ── Events and results ──────────────────────────────────────────────────────────

/** The typed events of a run (`job:started` ... `job:finished`, exactly once and last). */
export type * from './domain/events.js';
/** The events a watcher receives from another process (`watchJob`). */
export type { NotifiedEvent } from './db/index.js';
/** A job's result: status, attach ids in stage then slot order, and per stage what is short and why. */
export type { JobStatus, JobResult, StageResult, Shortfall, ShortfallReason } from './domain/result.js';

// ── Credits ─────────────────────────────────────────────────────────────────────

/** `grantCredits(database, userId, amount)` and `getBalance(database, userId)` (`{ balance, reserved }`). */
export { grantCredits, getBalance } from './db/index.js';
/** Largest credit amount and balance: 2^53-1. */
export { MAX_CREDITS } from './domain/credit-amount.js';

// ── Refusals a host may catch ───────────────────────────────────────────────────

/** Not enough credits, a grant past 2^53-1, a foreign or missing input image, another user's `jobId`, an unknown job, a job run by another process, an embedded data folder in use, a failed migration, a stored job event that does not check (`followJobEvents`). */
export {
  InsufficientCreditsError,
  CreditOverflowError,
  InputAttachmentError,
  JobOwnershipError,
  JobNotFoundError,
  JobStateError,
  JobLeasedError,
  DataDirLockedError,
  MigrationError,
  InvalidJobEventError,
} from './db/index.js';

// ── Plugging a generator or a store ─────────────────────────────────────────────

/** The generator port: one `generate(request)` Observable per attempt; what it receives and returns. */
export type { ImageGenerator, GenerationRequest, GeneratedImage, InputImage, TokenUsage, SlotRef, AttemptRequest } from './domain/ports.js';
/** How a generator says why an attempt failed: a `PipelineError` with an error class, which decides retry or stop. */
export { PipelineError, ERROR_CLASSES, isRetryable, type ErrorClass, type PipelineErrorOptions } from './domain/error-class.js';
/** Google Gemini's image models (`GEMINI_API_KEY`), one call per attempt, aborted on unsubscribe. */
export { GeminiImageGenerator, type GeminiImageGeneratorConfig } from './adapters/gemini-image-generator.js';
/**
 * The image thread (what `openPipeline` runs unless `IMAGEGEN_IMAGE_THREAD=off`): the Gemini adapter's
 * calls, the WebP conversion of deliveries (`RunJobDeps.codec`) and a folder store's writes (`writer`)
 * in one worker thread, off the event loop.
 */
export { ImageThread, type ImageThreadOptions } from './adapters/image-thread-link.js';
export { ThreadedImageGenerator, type ThreadedImageGeneratorConfig } from './adapters/threaded-image-generator.js';
export { ThreadedWebpCodec } from './adapters/threaded-webp-codec.js';
export type { WebpCodec, WebpImage } from './adapters/image-codec.js';
/** The offline generator: no key, no network; deterministic images and injected faults for demos and tests. */
export { OfflineImageGenerator, type OfflineImageGeneratorConfig } from './adapters/offline-image-generator.js';
/** The object store port, and the error its `get` throws for a missing key. */
export { ObjectNotFoundError, type ObjectStore } from './sinks/object-store.js';
/** Objects as files under a folder (the embedded default: `<data dir>/storage`). */
export { FolderObjectStore, type FolderObjectStoreConfig, type ObjectFileWriter } from './sinks/folder-object-store.js';
/** Objects on S3 or an S3-compatible server (`S3_BUCKET`). */
export { S3ObjectStore, type S3ObjectStoreConfig, type S3Credentials } from './sinks/s3-object-store.js';

// ── The engine alone ────────────────────────────────────────────────────────────

/** `runEngine(job, { generate, deliver }, options)`: the engine with a host's own delivery and billing (ports returning Observables). */
export { runEngine, type EngineJob, type EngineOptions } from './streams/engine.js';
/** The engine's two ports: `generate` an attempt, `deliver` an image (store, record, charge) for its slot. */
export type { EnginePorts, Delivery } from './domain/ports.js';
