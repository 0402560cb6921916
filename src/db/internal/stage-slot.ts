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
    throw new JobStateError(jobId, `has no stage ${stageIndex}`);
  }
  if (!Number.isInteger(slotIndex) || slotIndex < 0 || slotIndex >= stage.quantity) {
    throw new JobStateError(jobId, `stage ${stageIndex} has slots 0..${stage.quantity - 1}, not ${slotIndex}`);
  }
}
