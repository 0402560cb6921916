/**
 * imagegen-pipeline: image-generation pipeline jobs that deliver exactly the number
 * of images asked for, charge once per delivered image, survive crashes and flaky
 * APIs, report live progress and keep stage order.
 */
export * from './domain/error-class.js';
export * from './domain/aspect-ratio.js';
export * from './domain/job-spec.js';
export * from './domain/result.js';
export * from './domain/resume-state.js';
export * from './domain/random.js';
export { runEngine, DEFAULT_ENGINE_OPTIONS } from './streams/engine.js';
export { runStoredJob } from './streams/run-job.js';
export { runJob } from './streams/run-job-api.js';
export { submitSpec, importInputImage, newJobId } from './streams/submit-job.js';
export { runWorker, submitToQueue, JOB_QUEUE } from './streams/worker.js';
export { watchJob, readSnapshot } from './sources/watch-job.js';
export { readJobFile } from './sources/job-file.js';
export { ConcurrencyLimiter } from './operators/concurrency-limiter.js';
export { AdaptiveConcurrencyLimiter } from './operators/adaptive-concurrency-limiter.js';
export { fullJitterBackoff, DEFAULT_BACKOFF } from './operators/full-jitter-backoff.js';
export { fillSlots, JobControl } from './operators/fill-slots.js';
export { GeminiImageGenerator } from './generators/gemini-image-generator.js';
export { OfflineImageGenerator } from './generators/offline-image-generator.js';
export { FolderObjectStore } from './sinks/folder-object-store.js';
export { S3ObjectStore } from './sinks/s3-object-store.js';
export { toWebp, probeImage } from './sinks/image-codec.js';
export { generatedImageKey } from './sinks/storage-keys.js';
export { progressWriter } from './sinks/progress-writer.js';
export * from './db/index.js';
export { loadConfig, ConfigError } from './config.js';
export { openPipeline, createLogger, engineOptionsOf } from './pipeline.js';
