import { createHash, randomUUID } from 'node:crypto';
import { firstValueFrom } from 'rxjs';
import type { JobSpec } from '../domain/job-spec.js';
import { totalImages } from '../domain/job-spec.js';
import type { Database } from '../db/database.js';
import { InputAttachmentError, InsufficientCreditsError } from '../db/errors.js';
import { createAttachment } from '../db/ops/create-attachment.js';
import { findAttachmentByKey } from '../db/ops/find-attachment-by-key.js';
import { getAttachment } from '../db/ops/get-attachment.js';
import { getBalance } from '../db/ops/get-balance.js';
import { submitJob } from '../db/ops/submit-job.js';
import { extensionForMimeType } from '../sinks/image-codec.js';
import type { ObjectStore } from '../sinks/object-store.js';
import type { InputFile } from '../sources/job-file.js';

export interface SubmitDeps {
  readonly database: Database;
  readonly store: ObjectStore;
}

export interface SubmitSpecOptions {
  /** Stage input images read from files (`inputImage`), imported as attachments of the job's user. */
  readonly inputFiles?: readonly InputFile[];
  readonly pricePerImage: number;
}

/** A job id for a spec that did not bring one. */
export function newJobId(): string {
  return `job-${randomUUID()}`;
}

/**
 * Submits a validated spec: checks every input attachment (exists, belongs to the
 * user) and the user's balance **before** writing anything, then imports input files
 * (content-addressed: the same file is one attachment), then records the job and
 * reserves its price in one transaction. Submitting an existing job id of the same
 * user returns it (`created: false`) without a second reservation.
 *
 * @throws {InputAttachmentError} an unknown or foreign input attachment.
 * @throws {InsufficientCreditsError} the user cannot pay for the whole job.
 */
export async function submitSpec(deps: SubmitDeps, spec: JobSpec, options: SubmitSpecOptions): Promise<{ jobId: string; created: boolean }> {
  const { database, store } = deps;
  const jobId = spec.jobId ?? newJobId();
  const existing = await database.db.selectFrom('jobs').select(['user_id']).where('id', '=', jobId).executeTakeFirst();
  if (existing && existing.user_id === spec.userId) return { jobId, created: false };

  for (const stage of spec.stages) {
    if (stage.inputAttachId === null) continue;
    const attachment = await getAttachment(database, stage.inputAttachId);
    const field = `stages[${stage.index}].${stage.inputAttachField ?? 'mergedImageAttachId'}`;
    if (!attachment) throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not exist`);
    if (attachment.userId !== spec.userId) {
      throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not belong to user ${spec.userId}`);
    }
  }
  const required = options.pricePerImage * totalImages(spec);
  const { balance } = await getBalance(database, spec.userId);
  if (balance < required) throw new InsufficientCreditsError(spec.userId, required, balance);

  const imported = new Map<number, string>();
  for (const file of options.inputFiles ?? []) {
    imported.set(file.stageIndex, await importInputImage(deps, spec.userId, file));
  }
  const resolved: JobSpec = {
    ...spec,
    jobId,
    stages: spec.stages.map((stage) => ({ ...stage, inputAttachId: imported.get(stage.index) ?? stage.inputAttachId })),
  };
  const result = await submitJob(database, { spec: resolved, pricePerImage: options.pricePerImage });
  return { jobId: result.jobId, created: result.created };
}

/** Stores an input image under a content-addressed key and returns its attach id (reused when already imported). */
export async function importInputImage(deps: SubmitDeps, userId: string, file: Pick<InputFile, 'bytes' | 'mimeType' | 'width' | 'height'>): Promise<string> {
  const digest = createHash('sha256').update(file.bytes).digest('hex');
  const safeUser = createHash('sha256').update(userId).digest('hex').slice(0, 16);
  const key = `inputs/${safeUser}/${digest}.${extensionForMimeType(file.mimeType)}`;
  const found = await findAttachmentByKey(deps.database, userId, key);
  if (found) return found;
  await firstValueFrom(deps.store.put(key, file.bytes, file.mimeType), { defaultValue: undefined });
  const { attachId } = await createAttachment(deps.database, {
    userId,
    storageKey: key,
    contentType: file.mimeType,
    byteSize: file.bytes.byteLength,
    width: file.width,
    height: file.height,
  });
  return attachId;
}
