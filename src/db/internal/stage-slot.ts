import type { Transaction } from 'kysely';
import type { DatabaseSchema } from '../schema.js';
import { JobNotFoundError, JobStateError } from '../errors.js';

/** Throws unless `(jobId, stageIndex)` exists and `slotIndex < quantity`. */
export async function assertSlotExists(
  trx: Transaction<DatabaseSchema>,
  jobId: string,
  stageIndex: number,
  slotIndex: number,
): Promise<void> {
  const stage = await trx
    .selectFrom('stages')
    .select('quantity')
    .where('job_id', '=', jobId)
    .where('stage_index', '=', stageIndex)
    .executeTakeFirst();
  if (!stage) {
    const job = await trx.selectFrom('jobs').select('id').where('id', '=', jobId).executeTakeFirst();
    if (!job) throw new JobNotFoundError(jobId);
  }
  const missing = missingSlot(jobId, stageIndex, slotIndex, stage?.quantity ?? null);
  if (missing) throw missing;
}

/**
 * Why slot `slotIndex` of an existing job's stage `stageIndex` is not one the job owes, given
 * the stage's quantity (null: no such stage); null when it is one.
 */
export function missingSlot(jobId: string, stageIndex: number, slotIndex: number, quantity: number | null): JobStateError | null {
  if (quantity === null) return new JobStateError(jobId, `has no stage ${stageIndex}`);
  if (!Number.isInteger(slotIndex) || slotIndex < 0 || slotIndex >= quantity) {
    return new JobStateError(jobId, `stage ${stageIndex} has slots 0..${quantity - 1}, not ${slotIndex}`);
  }
  return null;
}
