import { catchError, defer, switchMap, take, throwError } from 'rxjs';
import type { Logger } from 'pino';
import { toPipelineError } from '../domain/error-class.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { BatchGenerator, EnginePorts, ImageGenerator } from '../domain/ports.js';
import { isTransientDatabaseError, type Database } from '../db/index.js';
import { AttemptStarter } from '../sinks/attempt-starter.js';
import type { WebpCodec } from '../adapters/image-codec.js';
import { retryWhileTransient } from '../operators/retry-while-transient.js';
import type { ObjectStore } from '../sinks/object-store.js';
import { deliverImage, type RunLease } from '../sinks/deliver-image.js';
import { stageInputs } from '../sources/stage-inputs.js';
import { storedBatchPorts } from './stored-batch-ports.js';

/** The real parts behind the engine's ports. */
export interface StoredPortsDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
  /** The provider's batch API, for `mode: "batch"` stages (`storedBatchPorts`). */
  readonly batches?: BatchGenerator | undefined;
  readonly logger?: Logger | undefined;
  /** The run's lease: deliveries commit only while it is held (see `deliverImage`). */
  readonly lease?: RunLease | undefined;
  /** The WebP conversion of deliveries (see `deliverImage`); none: `toWebp` in this thread. */
  readonly codec?: WebpCodec | undefined;
}

/** Per-run options of {@link storedPorts}. */
export interface StoredPortsOptions {
  /** WebP quality of stored images. Default `DEFAULT_WEBP_QUALITY`. */
  readonly webpQuality?: number | undefined;
}

/**
 * Binds the engine's two ports to the database, the object store and the generator for
 * one job's stages:
 *
 * - `generate` = record the attempt start (`startAttempt`, so a crash does not reset the
 *   budget; starts that pile up while one is written share one statement: `AttemptStarter`;
 *   an unreachable database is waited out with backoff, no provider call is made meanwhile
 *   and no budget spent; any other failure is `database`) → the stage's shared input image
 *   (a failed read is `storage`) → the generator.
 * - `deliver` = {@link deliverImage}: WebP, upload, one delivery transaction, duplicate cleanup.
 * - `batch` (with `deps.batches`): the batch stages' ports (`storedBatchPorts`), sharing
 *   the stages' input images.
 *
 * ```
 * generate  start──input──generator──img|
 * deliver   webp──put──commit──(delete if duplicate)──d|
 * ```
 */
export function storedPorts(deps: StoredPortsDeps, job: { readonly jobId: string; readonly stages: readonly StageSpec[] }, options: StoredPortsOptions = {}): EnginePorts {
  const { database, generator, batches } = deps;
  const inputs = stageInputs(deps, job.stages);
  const starter = new AttemptStarter(database);
  return {
    batch: batches !== undefined && job.stages.some((s) => s.mode === 'batch') ? storedBatchPorts({ ...deps, batches, inputs }, job.jobId, options) : undefined,
    generate: (request) =>
      defer(() => starter.start(request)).pipe(
        retryWhileTransient({
          isTransient: isTransientDatabaseError,
          onRetry: (error, retry, delayMs) => deps.logger?.warn({ err: error, stage: request.stageIndex, slot: request.slotIndex, retry, delayMs }, 'attempt start waits for the database'),
        }),
        catchError((e: unknown) => throwError(() => toPipelineError(e, 'database'))),
        switchMap(() => inputs[request.stageIndex]!.pipe(take(1))),
        catchError((e: unknown) => throwError(() => toPipelineError(e, 'storage'))),
        switchMap((input) => generator.generate({ ...request, input })),
      ),
    deliver: (request, image) => deliverImage(deps, request, image, options),
  };
}
