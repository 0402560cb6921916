import type { ErrorClass } from '../../domain/error-class.js';
import { isErrorClass } from '../../domain/error-class.js';
import { jobStatusOf, type JobResult, type JobStatus, type StageResult } from '../../domain/result.js';
import type { Database } from '../database.js';
import { isJobStatus, isShortfallReason } from '../internal/domain-values.js';
import type { JobRowStatus } from '../schema.js';

/** A job as it stands in the database, in the shape of the engine's {@link JobResult}. */
export interface StoredJobResult {
  readonly rowStatus: JobRowStatus;
  readonly userId: string;
  readonly result: JobResult;
  readonly credits: { readonly reserved: number; readonly captured: number; readonly released: number };
}

/**
 * Reads a job's result from its rows: per stage the filled slots in slot order and
 * the stored shortfall, the merged ids in stage then slot order. For a job that has
 * not ended, `status` is what it would be if it ended now. Plain reads, no locks.
 */
export async function readJobResult(database: Database, jobId: string): Promise<StoredJobResult | null> {
  const job = await database.db
    .selectFrom('jobs')
    .select(['user_id', 'status', 'total', 'credits_reserved', 'credits_captured', 'credits_released'])
    .where('id', '=', jobId)
    .executeTakeFirst();
  if (!job) return null;
  const stageRows = await database.db
    .selectFrom('stages')
    .select(['stage_index', 'quantity', 'shortfall_reason', 'shortfall_error_class'])
    .where('job_id', '=', jobId)
    .orderBy('stage_index')
    .execute();
  const slotRows = await database.db
    .selectFrom('slots')
    .select(['stage_index', 'slot_index', 'attach_id'])
    .where('job_id', '=', jobId)
    .where('attach_id', 'is not', null)
    .orderBy('stage_index')
    .orderBy('slot_index')
    .execute();

  const stages: StageResult[] = stageRows.map((row) => {
    const attachIds = slotRows.filter((s) => s.stage_index === row.stage_index).map((s) => s.attach_id as string);
    const missing = row.quantity - attachIds.length;
    const reason = isShortfallReason(row.shortfall_reason) ? row.shortfall_reason : 'budget_exhausted';
    const errorClass: ErrorClass | null = isErrorClass(row.shortfall_error_class) ? row.shortfall_error_class : null;
    return {
      index: row.stage_index,
      quantity: row.quantity,
      delivered: attachIds.length,
      attachIds,
      shortfall: missing === 0 ? null : { count: missing, reason, errorClass },
    };
  });
  const attachIds = stages.flatMap((s) => s.attachIds);
  // A job not ended yet (`queued`, `running`): what it would be if it ended now, uncancelled.
  const status: JobStatus = isJobStatus(job.status) ? job.status : jobStatusOf(stages, false);
  return {
    rowStatus: job.status,
    userId: job.user_id,
    result: { jobId, status, totalImages: job.total, deliveredImages: attachIds.length, attachIds, stages },
    credits: { reserved: job.credits_reserved, captured: job.credits_captured, released: job.credits_released },
  };
}
