/**
 * imagegen-pipeline: image-generation pipeline jobs that deliver exactly the number
 * of images asked for, charge once per delivered image, survive crashes and flaky
 * APIs, report live progress and keep stage order.
 */
export * from './domain/error-class.js';
export * from './domain/aspect-ratio.js';
export * from './domain/job-spec.js';
export type * from './domain/events.js';
export type * from './domain/ports.js';
export * from './domain/result.js';
export * from './domain/resume-state.js';
export * from './domain/random.js';

export { runEngine, DEFAULT_ENGINE_OPTIONS, type EngineJob, type EngineOptions } from './streams/engine.js';
export { runStoredJob, type RunJobDeps, type RunJobOptions } from './streams/run-job.js';
export { runJob, type RunJobInput } from './jobs/run-job.js';
export { submitSpec, importInputImage, newJobId } from './jobs/submit-job.js';
export { runWorker, submitToQueue, JOB_QUEUE, type WorkerOptions } from './streams/worker.js';
export { watchJob, readSnapshot, type JobSnapshot, type WatchedEvent } from './sources/watch-job.js';
export { readJobFile, type JobFile, type InputFile } from './sources/job-file.js';

export { ConcurrencyLimiter, type Permit } from './engine/concurrency-limiter.js';
export { AdaptiveConcurrencyLimiter } from './engine/adaptive-concurrency-limiter.js';
export { fullJitterBackoff, DEFAULT_BACKOFF, type BackoffConfig } from './engine/full-jitter-backoff.js';
export { fillSlots, JobControl } from './operators/fill-slots.js';

export { GeminiImageGenerator, type GeminiImageGeneratorConfig } from './adapters/gemini-image-generator.js';
export { OfflineImageGenerator, type OfflineImageGeneratorConfig } from './adapters/offline-image-generator.js';
export type { ObjectStore } from './sinks/object-store.js';
export { FolderObjectStore } from './sinks/folder-object-store.js';
export { S3ObjectStore, type S3ObjectStoreConfig } from './sinks/s3-object-store.js';
export { toWebp, probeImage, decodeImage } from './adapters/image-codec.js';
export { generatedImageKey } from './sinks/storage-keys.js';
export { progressWriter } from './sinks/progress-writer.js';

export * from './db/index.js';
export { loadConfig, ConfigError, type PipelineConfig } from './config.js';
export { openPipeline, createLogger, engineOptionsOf, type Pipeline, type PipelineOverrides } from './pipeline.js';
