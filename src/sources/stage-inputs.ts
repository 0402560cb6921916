import { ReplaySubject, defer, firstValueFrom, share, type Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { InputImage } from '../domain/ports.js';
import { getAttachment, type Database } from '../db/index.js';
import { toProviderInputImage } from '../adapters/provider-input-image.js';
import type { ObjectStore } from '../sinks/object-store.js';

/** Where input images are read from. */
export interface StageInputsDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  /** Byte budget of the image the provider gets. Default `MAX_PROVIDER_INPUT_BYTES` (13 MiB). */
  readonly maxProviderInputBytes?: number;
}

/**
 * Per stage, its input image (`null` for a stage without one): the attachment is looked
 * up and its bytes read from storage on the first subscription, then shared by every
 * attempt of the stage (one read per stage, not per attempt). A failed read is not
 * cached: the next attempt reads again. An attachment that is gone is `invalid_request`.
 *
 * What the attempts get is the provider's form of the image (`toProviderInputImage`): the
 * stored original when the provider takes it as it is (PNG, JPEG, WebP, HEIC/HEIF within
 * 13 MiB), else a PNG/JPEG copy converted and downscaled once here, with the read, and
 * shared the same way. The attachment keeps the original bytes. Why here and not at
 * import: every way an input arrives (job file, `inputImageData`, an uploaded or older
 * attachment) passes here, nothing extra is stored or migrated, and the cost is one
 * conversion per stage and run, only for inputs that need one.
 *
 * ```
 * attempt 1  ──read──i|
 * attempt 2      ────i|        the same read, replayed
 * attempt 3  (after a failed read) ──read──i|
 * ```
 */
export function stageInputs(deps: StageInputsDeps, stages: readonly StageSpec[]): readonly Observable<InputImage | null>[] {
  const { database, store } = deps;
  return stages.map((stage) =>
    defer(async (): Promise<InputImage | null> => {
      if (stage.inputAttachId === null) return null;
      const attachment = await getAttachment(database, stage.inputAttachId);
      if (!attachment) throw new PipelineError('invalid_request', `input attachment ${stage.inputAttachId} is gone`);
      const bytes = await firstValueFrom(store.get(attachment.storageKey));
      const sent = await toProviderInputImage(bytes, deps.maxProviderInputBytes === undefined ? {} : { maxBytes: deps.maxProviderInputBytes });
      return { bytes: sent.bytes, mimeType: sent.mimeType };
    }).pipe(share({ connector: () => new ReplaySubject<InputImage | null>(1), resetOnError: true, resetOnComplete: false, resetOnRefCountZero: false })),
  );
}
