import { createHash, randomUUID } from 'node:crypto';
import { firstValueFrom } from 'rxjs';
import type { JobSpec, StageSpec } from '../domain/job-spec.js';
import { JobSpecError, totalImages } from '../domain/job-spec.js';
import {
  createAttachment,
  findAttachmentByKey,
  getAttachment,
  getBalance,
  getJobSpec,
  InputAttachmentError,
  InsufficientCreditsError,
  JobOwnershipError,
  retryTransient,
  submitJob,
  type Database,
} from '../db/index.js';
import { extensionForMimeType } from '../adapters/image-codec.js';
import type { ObjectStore } from '../sinks/object-store.js';
import type { InputFile } from '../sources/job-file.js';
import { resolveWebhookTarget, WebhookTargetError, type LookupAll } from '../sinks/webhook-target.js';

/** Credits per delivered image when neither the caller nor `IMAGEGEN_PRICE_PER_IMAGE` says. */
export const DEFAULT_PRICE_PER_IMAGE = 1;

export interface SubmitDeps {
  readonly database: Database;
  readonly store: ObjectStore;
}

export interface SubmitSpecOptions {
  /** Stage input images read from files (`inputImage`), imported as attachments of the job's user. */
  readonly inputFiles?: readonly InputFile[];
  readonly pricePerImage: number;
  /** `IMAGEGEN_WEBHOOK_ALLOW_LOCAL`: a webhook may go to this machine or a private network. Default false. */
  readonly allowLocalWebhooks?: boolean | undefined;
  /** Resolves the webhook's host (default the system's `dns.lookup`). */
  readonly lookup?: LookupAll | undefined;
}

/**
 * A job id that already names a job with another spec. The job id is an idempotency
 * key: the same id with the same spec resumes (or reprints) the job, a different spec
 * under the same id is refused rather than silently answered with the old job.
 */
export class JobSpecConflictError extends Error {
  override readonly name = 'JobSpecConflictError';
  constructor(
    readonly jobId: string,
    /** The first field that differs from the stored job, e.g. `stages[0].prompt`. */
    readonly field: string,
  ) {
    super(`jobId ${jobId} already names a different job (${field} differs); give this job another jobId, or submit the same spec to resume it`);
  }
}

/** A job id for a spec that did not bring one. */
export function newJobId(): string {
  return `job-${randomUUID()}`;
}

/**
 * Submits a validated spec. The submit rules, in the order they are checked (every
 * refusal happens before anything is written):
 *
 * 1. an existing job id: another user's is {@link JobOwnershipError}; the same user's
 *    with the same spec is returned as is (`created: false`, no second reservation);
 *    with a different spec it is {@link JobSpecConflictError};
 * 2. a webhook's host resolves, and to no private, loopback, link-local, ... address
 *    ({@link checkWebhookAtSubmit}; checked again at every send);
 * 3. every input attachment exists and belongs to the user ({@link InputAttachmentError});
 * 4. the user's balance covers the whole job ({@link InsufficientCreditsError});
 * 5. the object store answers (a listing of the job's prefix), so a store that is
 *    down refuses the submit instead of leaving a reserved job nobody can deliver;
 * 6. input files are imported (content-addressed: the same file is one attachment);
 * 7. the job is recorded and its price reserved in one transaction.
 *
 * `run`, `submit` and the library's `runJob` all submit through here.
 */
export async function submitSpec(deps: SubmitDeps, spec: JobSpec, options: SubmitSpecOptions): Promise<{ jobId: string; created: boolean }> {
  const { database, store } = deps;
  const jobId = spec.jobId ?? newJobId();
  const inputFiles = options.inputFiles ?? [];
  if (await existingJobMatches(database, jobId, spec, inputFiles)) return { jobId, created: false };
  await checkWebhookAtSubmit(spec, { allowLocal: options.allowLocalWebhooks === true, lookup: options.lookup });

  for (const stage of spec.stages) {
    if (stage.inputAttachId === null) continue;
    const attachment = await getAttachment(database, stage.inputAttachId);
    const field = attachFieldOf(stage);
    if (!attachment) throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not exist`);
    if (attachment.userId !== spec.userId) {
      throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not belong to user ${spec.userId}`);
    }
  }
  const required = options.pricePerImage * totalImages(spec);
  const { balance } = await getBalance(database, spec.userId);
  if (balance < required) throw new InsufficientCreditsError(spec.userId, required, balance);

  // Storage must answer before anything is written: the new job's prefix is empty, so this is a cheap round trip.
  await firstValueFrom(store.list(`generated/${jobId}/`), { defaultValue: [] });
  const imported = new Map<number, string>();
  for (const file of inputFiles) {
    imported.set(file.stageIndex, await importInputImage(deps, spec.userId, file));
  }
  const resolved: JobSpec = {
    ...spec,
    jobId,
    stages: spec.stages.map((stage) => ({ ...stage, inputAttachId: imported.get(stage.index) ?? stage.inputAttachId })),
  };
  const result = await submitJob(database, { spec: resolved, pricePerImage: options.pricePerImage });
  // Another submit of this job id committed first: the same rules decide (its spec must be ours).
  if (!result.created) await existingJobMatches(database, jobId, spec, inputFiles);
  return { jobId: result.jobId, created: result.created };
}

/**
 * The webhook's target, checked when the job is submitted: its host must resolve, and to
 * no refused address (`resolveWebhookTarget`), else a {@link JobSpecError} on
 * `webhook.url`. A resolver that cannot answer now (`EAI_AGAIN`) does not refuse the job:
 * the check is made again at every send.
 */
export async function checkWebhookAtSubmit(spec: Pick<JobSpec, 'webhook'>, options: { readonly allowLocal: boolean; readonly lookup?: LookupAll | undefined }): Promise<void> {
  if (!spec.webhook) return;
  try {
    await resolveWebhookTarget(new URL(spec.webhook.url), { allowLocal: options.allowLocal }, ...(options.lookup ? [options.lookup] : []));
  } catch (error) {
    if (!(error instanceof WebhookTargetError)) throw error;
    if (error.kind === 'dns' && error.code !== 'ENOTFOUND' && error.code !== 'ENODATA') return;
    throw new JobSpecError([{ field: 'webhook.url', rule: error.rule }]);
  }
}

/**
 * What {@link submitSpec} answers when the database does not exist yet (a fresh
 * embedded data folder): it holds no attachment, no credits and no job, so an input
 * attachment id or a price is refused with the same errors, without creating the
 * database to find that out.
 */
export function refuseOnEmptyDatabase(spec: JobSpec, options: Pick<SubmitSpecOptions, 'pricePerImage'>): void {
  for (const stage of spec.stages) {
    if (stage.inputAttachId !== null) throw new InputAttachmentError(attachFieldOf(stage), stage.inputAttachId, `attachment ${stage.inputAttachId} does not exist`);
  }
  const required = options.pricePerImage * totalImages(spec);
  if (required > 0) throw new InsufficientCreditsError(spec.userId, required, 0);
}

/**
 * Whether `jobId` already names this very job: false when no job has the id, true when
 * the stored job has the same user and the same spec.
 *
 * @throws {JobOwnershipError} the id is another user's job.
 * @throws {JobSpecConflictError} the id is this user's job with another spec.
 */
async function existingJobMatches(database: Database, jobId: string, spec: JobSpec, inputFiles: readonly InputFile[]): Promise<boolean> {
  const stored = await retryTransient(() => getJobSpec(database, jobId));
  if (!stored) return false;
  if (stored.userId !== spec.userId) throw new JobOwnershipError(jobId, spec.userId);
  const differs = await specDifference(database, stored.spec, spec, inputFiles);
  if (differs !== null) throw new JobSpecConflictError(jobId, differs);
  return true;
}

/**
 * The one place that decides whether a submitted spec is the stored job: the first
 * field that differs, or null. Compared: `productionId`, `priority`, `maxCostUsd`, the webhook (`webhook.url`,
 * `webhook.events` as a set), the number of stages, and per
 * stage `prompt`, `aspectRatio`, `imageSize`, `quantity` and the input image. An input attachment id
 * is compared as an id; an input file by content (its content-addressed storage key
 * against the key of the stored job's input attachment), so the same image under
 * another path is the same job.
 */
async function specDifference(database: Database, stored: JobSpec, spec: JobSpec, inputFiles: readonly InputFile[]): Promise<string | null> {
  if ((stored.productionId ?? null) !== spec.productionId) return 'productionId';
  if ((stored.priority ?? 0) !== (spec.priority ?? 0)) return 'priority';
  if ((stored.maxCostUsd ?? null) !== (spec.maxCostUsd ?? null)) return 'maxCostUsd';
  if ((stored.webhook === undefined) !== (spec.webhook === undefined)) return 'webhook';
  if (stored.webhook && spec.webhook) {
    if (stored.webhook.url !== spec.webhook.url) return 'webhook.url';
    if ([...stored.webhook.events].sort().join() !== [...spec.webhook.events].sort().join()) return 'webhook.events';
  }
  if (stored.stages.length !== spec.stages.length) return 'stages';
  for (const [i, stage] of spec.stages.entries()) {
    const old = stored.stages[i] as StageSpec;
    const at = `stages[${i}]`;
    if (old.prompt !== stage.prompt) return `${at}.prompt`;
    if (old.aspectRatio !== stage.aspectRatio) return `${at}.aspectRatio`;
    if ((old.imageSize ?? null) !== (stage.imageSize ?? null)) return `${at}.imageSize`;
    if (old.quantity !== stage.quantity) return `${at}.quantity`;
    const file = inputFiles.find((f) => f.stageIndex === stage.index);
    if (file) {
      const storedInput = old.inputAttachId === null ? null : await getAttachment(database, old.inputAttachId);
      if (storedInput?.storageKey !== inputStorageKey(spec.userId, file)) return `${at}.inputImage`;
    } else if (old.inputAttachId !== stage.inputAttachId) return attachFieldOf(stage);
  }
  return null;
}

/** The spec field that names a stage's input attachment, as the user wrote it. */
function attachFieldOf(stage: StageSpec): string {
  return `stages[${stage.index}].${stage.inputAttachField ?? 'mergedImageAttachId'}`;
}

/** The content-addressed key of a user's input image: the same bytes always get the same key. */
function inputStorageKey(userId: string, file: Pick<InputFile, 'bytes' | 'mimeType'>): string {
  const digest = createHash('sha256').update(file.bytes).digest('hex');
  const safeUser = createHash('sha256').update(userId).digest('hex').slice(0, 16);
  return `inputs/${safeUser}/${digest}.${extensionForMimeType(file.mimeType)}`;
}

/** Stores an input image under a content-addressed key and returns its attach id (reused when already imported). */
export async function importInputImage(deps: SubmitDeps, userId: string, file: Pick<InputFile, 'bytes' | 'mimeType' | 'width' | 'height'>): Promise<string> {
  const key = inputStorageKey(userId, file);
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
