import { catchError, concat, concatMap, defer, from, ignoreElements, of, throwError, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import { toPipelineError } from '../domain/error-class.js';
import type { AttemptRequest, Delivery, GeneratedImage } from '../domain/ports.js';
import { deliverSlot, getAttachment, isTransientDatabaseError, LeaseLostError, type Database } from '../db/index.js';
import { retryWhileTransient } from '../operators/retry-while-transient.js';
import { DEFAULT_WEBP_QUALITY, toWebp, type StoredWebp, type WebpCodec } from '../adapters/image-codec.js';
import type { ObjectStore } from './object-store.js';
import { generatedImageKey } from './storage-keys.js';

/** Where a delivery goes. */
export interface DeliverImageDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly logger?: Logger | undefined;
  /** The run's lease: deliveries commit only while it is held; a refusal calls `lost()`. */
  readonly lease?: RunLease | undefined;
  /** The WebP conversion (`ThreadedWebpCodec`: in the image thread). Default: `toWebp` in this thread. Not called when the store converts (`putWebp`). */
  readonly codec?: WebpCodec | undefined;
}

/** What a delivery needs of the run's lease. */
export interface RunLease {
  readonly owner: string;
  /** Called when a delivery found the lease taken by another runner (the run stops). */
  lost(): void;
}

/** Per-run options of {@link deliverImage}. */
export interface DeliverImageOptions {
  /** WebP quality of stored images. Default {@link DEFAULT_WEBP_QUALITY}. */
  readonly webpQuality?: number | undefined;
}

/**
 * The engine's `deliver` port over real parts: convert to WebP (sharp validates the
 * bytes), store it under `generated/<jobId>/<stage>/<slot>-<attempt>.webp`, then commit
 * the delivery with `deliverSlot` (one transaction: attach record, slot fill, credit
 * capture, counters). A duplicate (the slot was already filled) commits nothing and its
 * upload is removed. A run that lost its lease commits nothing (`cancelled`; `lease.lost()`). Each step's failure is classified: an unreadable image is
 * `corrupt_image`, a failed commit `database`, a failed cleanup `storage`; a store's own
 * {@link PipelineError} keeps its class.
 *
 * A commit that fails because the database is unreachable is tried again, with backoff, until
 * it answers (`retryWhileTransient`): the image is paid for and stored, and waiting costs
 * nothing, while failing the attempt would buy the image again. It cannot deliver without
 * the lease: the commit checks the lease under the job's lock, so a run that lost the job
 * while the database was away is refused when it comes back. A retried commit that finds
 * the slot filled under this attempt's own storage key is this attempt's commit (the first
 * try committed, its answer was lost): a delivery, not a duplicate, and the upload stays.
 *
 * ```
 * toWebp ──w|
 * put       ──|
 * commit       ──d|                 d = { attachId, duplicate }
 * delete          ──|               only when d.duplicate
 * result ─────────────d|
 * ```
 *
 * The conversion starts when `deliverImage` is called; the upload and the commit on
 * subscription. A store that converts (`ObjectStore.putWebp`: the folder store in the image
 * thread) does the first two steps in one, on subscription.
 */
export function deliverImage(deps: DeliverImageDeps, request: AttemptRequest, image: GeneratedImage, options: DeliverImageOptions = {}): Observable<Delivery> {
  const { database, store, logger } = deps;
  const key = generatedImageKey(request);
  const quality = options.webpQuality ?? DEFAULT_WEBP_QUALITY;
  return storedWebp(deps, key, image, quality).pipe(
    concatMap((webp) =>
      defer(async () => {
        const delivery = await deliverSlot(database, {
          jobId: request.jobId,
          stageIndex: request.stageIndex,
          slotIndex: request.slotIndex,
          attempt: request.attempt,
          storageKey: key,
          contentType: webp.contentType,
          byteSize: webp.byteSize,
          width: webp.width,
          height: webp.height,
          leaseOwner: deps.lease?.owner,
        });
        return delivery.duplicate ? ownCommit(database, delivery, key) : delivery;
      }).pipe(
        retryWhileTransient({
          isTransient: isTransientDatabaseError,
          onRetry: (error, retry, delayMs) => logger?.warn({ err: error, stage: request.stageIndex, slot: request.slotIndex, retry, delayMs }, 'delivery waits for the database'),
        }),
        catchError((e: unknown) => {
          // Another runner holds the job now: this run stops; the upload is an orphan its sweep removes.
          if (e instanceof LeaseLostError) {
            deps.lease?.lost();
            return throwError(() => toPipelineError(e, 'cancelled'));
          }
          // No delete on a database error: the commit may have happened before the
          // connection died. The resume step compares with the committed rows.
          return throwError(() => toPipelineError(e, 'database'));
        }),
      ),
    ),
    concatMap((delivery) => {
      if (!delivery.duplicate) return of(delivery);
      logger?.info({ stage: request.stageIndex, slot: request.slotIndex, attachId: delivery.attachId }, 'slot was already filled; upload removed');
      return concat(
        store.delete(key).pipe(
          ignoreElements(),
          catchError((e: unknown) => throwError(() => toPipelineError(e, 'storage'))),
        ),
        of(delivery),
      );
    }),
  );
}

/**
 * The image converted to WebP and stored under `key`: by the store in one step when it can
 * (`putWebp`: the folder store in the image thread, whose errors are already classified),
 * else converted by the codec (started now) and then put.
 */
function storedWebp(deps: DeliverImageDeps, key: string, image: GeneratedImage, quality: number): Observable<StoredWebp> {
  const { store } = deps;
  if (store.putWebp !== undefined) return store.putWebp(key, image.bytes, { quality });
  return from(deps.codec ? deps.codec.toWebp(image.bytes, { quality }) : toWebp(image.bytes, { quality })).pipe(
    catchError((e: unknown) => throwError(() => toPipelineError(e, 'corrupt_image'))),
    concatMap((webp) => concat(store.put(key, webp.bytes, webp.contentType).pipe(ignoreElements()), of(webp))),
  );
}

/** A "duplicate" whose attach record holds this attempt's own object is this attempt's earlier, committed try. */
async function ownCommit(database: Database, delivery: Delivery, key: string): Promise<Delivery> {
  const attachment = await getAttachment(database, delivery.attachId);
  return attachment?.storageKey === key ? { attachId: delivery.attachId, duplicate: false } : delivery;
}
