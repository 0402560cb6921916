import type { JobSpec } from '../../domain/job-spec.js';
import { totalImages } from '../../domain/job-spec.js';
import type { Database } from '../database.js';
import { InputAttachmentError, InsufficientCreditsError, JobOwnershipError } from '../errors.js';
import { jsonb } from '../internal/json.js';
import { isUniqueViolation } from '../internal/sql-errors.js';
import { assertAmount } from '../internal/assert.js';
import { lockCreditAccount } from '../internal/lock-credit-account.js';

export interface SubmitJobOptions {
  /** A validated spec with a non-null `jobId` and an `inputAttachId` on every stage. */
  readonly spec: JobSpec;
  /** Credits one delivered image costs. */
  readonly pricePerImage: number;
}

export interface SubmitJobResult {
  readonly jobId: string;
  /** False when the job id already existed for this user: nothing new was reserved. */
  readonly created: boolean;
  readonly status: string;
}

/**
 * Records a job and reserves its full price (`pricePerImage x total images`), in
 * one transaction; any refusal rolls everything back, so a refused submit writes
 * nothing.
 *
 * Order of checks: existing job id (same user: returned as is; other user:
 * {@link JobOwnershipError}), input attachments ({@link InputAttachmentError}),
 * balance ({@link InsufficientCreditsError}).
 *
 * Locking: the user's account row is locked `for update` first. That serialises
 * every submit of one user, so parallel submits cannot both spend the same
 * credits, and a duplicate submit of the same job id sees the first one's
 * committed row. Two users racing for one job id are told apart by the primary
 * key of `jobs` (the loser gets a unique violation, turned into
 * {@link JobOwnershipError}).
 */
export async function submitJob(database: Database, options: SubmitJobOptions): Promise<SubmitJobResult> {
  const { spec, pricePerImage } = options;
  const jobId = spec.jobId;
  if (jobId === null) throw new TypeError('submitJob needs a spec with a jobId');
  if (spec.stages.length === 0) throw new TypeError('submitJob needs at least one stage');
  assertAmount('pricePerImage', pricePerImage);
  const total = totalImages(spec);
  const price = pricePerImage * total;
  assertAmount('job price', price);

  try {
    return await database.db.transaction().execute(async (trx) => {
      const account = await lockCreditAccount(trx, spec.userId);

      const existing = await trx.selectFrom('jobs').select(['user_id', 'status']).where('id', '=', jobId).executeTakeFirst();
      if (existing) {
        if (existing.user_id !== spec.userId) throw new JobOwnershipError(jobId, spec.userId);
        return { jobId, created: false, status: existing.status };
      }

      const inputIds = spec.stages.map((s) => s.inputAttachId).filter((id): id is string => id !== null);
      const owners = new Map<string, string>();
      if (inputIds.length > 0) {
        const rows = await trx.selectFrom('attachments').select(['id', 'user_id']).where('id', 'in', inputIds).execute();
        for (const row of rows) owners.set(row.id, row.user_id);
      }
      spec.stages.forEach((stage, i) => {
        const field = `stages[${i}].mergedImageAttachId`;
        if (stage.index !== i) throw new TypeError(`stages[${i}].index is ${stage.index}, expected ${i}`);
        if (stage.inputAttachId === null) throw new InputAttachmentError(field, null, 'is required (import inputImage first)');
        const owner = owners.get(stage.inputAttachId);
        if (owner === undefined) throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not exist`);
        if (owner !== spec.userId) {
          throw new InputAttachmentError(field, stage.inputAttachId, `attachment ${stage.inputAttachId} does not belong to user ${spec.userId}`);
        }
      });

      if (account.balance < price) throw new InsufficientCreditsError(spec.userId, price, account.balance);

      await trx
        .insertInto('jobs')
        .values({
          id: jobId,
          user_id: spec.userId,
          production_id: spec.productionId,
          // Written only when given: the column's default (0) is the default priority.
          ...(spec.priority !== undefined ? { priority: spec.priority } : {}),
          spec: jsonb(spec),
          price_per_image: pricePerImage,
          status: 'queued',
          total,
          credits_reserved: price,
        })
        .execute();
      await trx
        .insertInto('stages')
        .values(
          spec.stages.map((stage) => ({
            job_id: jobId,
            stage_index: stage.index,
            prompt: stage.prompt,
            aspect_ratio: stage.aspectRatio,
            quantity: stage.quantity,
            input_attach_id: stage.inputAttachId,
            shortfall_count: null,
            shortfall_reason: null,
            shortfall_error_class: null,
          })),
        )
        .execute();
      await trx
        .updateTable('credit_accounts')
        .set((eb) => ({ balance: eb('balance', '-', price), reserved: eb('reserved', '+', price), updated_at: new Date() }))
        .where('user_id', '=', spec.userId)
        .execute();
      await trx.insertInto('credit_ledger').values({ user_id: spec.userId, kind: 'reserve', amount: price, job_id: jobId }).execute();
      return { jobId, created: true, status: 'queued' };
    });
  } catch (error) {
    if (isUniqueViolation(error, 'jobs_pkey')) {
      // Another user's submit of this job id committed between our read and our insert.
      throw new JobOwnershipError(jobId, spec.userId);
    }
    throw error;
  }
}
