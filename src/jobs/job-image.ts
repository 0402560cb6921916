import { firstValueFrom } from 'rxjs';
import { getSlotAttachment, retryTransient } from '../db/index.js';
import { visibleJob, type Caller } from './caller.js';
import type { SubmitDeps } from './submit-job.js';

/** A slot that has no delivered image (yet, or ever: out of range). */
export class ImageNotFoundError extends Error {
  override readonly name = 'ImageNotFoundError';
  constructor(
    readonly jobId: string,
    readonly stage: number,
    readonly slot: number,
  ) {
    super(`job ${jobId} has no delivered image in stage ${stage} slot ${slot}`);
  }
}

/** A delivered image: its bytes, or a short-lived URL to them when the store can give one. */
export type JobImage =
  | { readonly kind: 'bytes'; readonly attachId: string; readonly contentType: string; readonly bytes: Uint8Array }
  | { readonly kind: 'url'; readonly attachId: string; readonly url: string; readonly expiresInSeconds: number };

/**
 * The image delivered to slot `slot` of stage `stage` of the caller's job: a presigned
 * URL when the store makes them (S3: the bytes never pass through this process), else
 * the bytes. `GET /v1/jobs/:id/images/:stage/:slot`.
 *
 * @throws {JobNotFoundError} no such job, or another user's.
 * @throws {ImageNotFoundError} the slot is owed, or out of range.
 */
export async function jobImage(deps: SubmitDeps, caller: Caller, jobId: string, stage: number, slot: number, options: { readonly expiresInSeconds: number }): Promise<JobImage> {
  await visibleJob(deps.database, caller, jobId);
  const attachment = await retryTransient(() => getSlotAttachment(deps.database, jobId, stage, slot));
  if (attachment === null) throw new ImageNotFoundError(jobId, stage, slot);
  const { attachId, storageKey, contentType } = attachment;
  if (deps.store.presignGet) {
    const url = await firstValueFrom(deps.store.presignGet(storageKey, { expiresInSeconds: options.expiresInSeconds }));
    return { kind: 'url', attachId, url, expiresInSeconds: options.expiresInSeconds };
  }
  return { kind: 'bytes', attachId, contentType, bytes: await firstValueFrom(deps.store.get(storageKey)) };
}
