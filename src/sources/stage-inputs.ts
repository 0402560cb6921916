import { ReplaySubject, defer, firstValueFrom, share, type Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import type { StageSpec } from '../domain/job-spec.js';
import type { InputImage } from '../domain/ports.js';
import { getAttachment, type Database } from '../db/index.js';
import type { ObjectStore } from '../sinks/object-store.js';

/** Where input images are read from. */
export interface StageInputsDeps {
  readonly database: Database;
  readonly store: ObjectStore;
}

/**
 * Per stage, its input image (`null` for a stage without one): the attachment is looked
 * up and its bytes read from storage on the first subscription, then shared by every
 * attempt of the stage (one read per stage, not per attempt). A failed read is not
 * cached: the next attempt reads again. An attachment that is gone is `invalid_request`.
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
      return { bytes, mimeType: attachment.contentType };
    }).pipe(share({ connector: () => new ReplaySubject<InputImage | null>(1), resetOnError: true, resetOnComplete: false, resetOnRefCountZero: false })),
  );
}
