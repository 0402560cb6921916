import type { Database } from '../database.js';
import { getAttachment, type AttachmentRow } from './get-attachment.js';

/**
 * The attach record that fills slot `slotIndex` of stage `stageIndex` of job `jobId`, or
 * null while the slot is owed (or when there is no such job, stage or slot).
 *
 * An attach record of a generated image exists only for a committed delivery (it is
 * written in the delivery's transaction, unique per slot: `attachments_one_per_slot`),
 * so whatever this finds is a delivered image whose object is in storage. Plain reads,
 * no lock.
 */
export async function getSlotAttachment(database: Database, jobId: string, stageIndex: number, slotIndex: number): Promise<AttachmentRow | null> {
  const row = await database.db
    .selectFrom('attachments')
    .select('id')
    .where('job_id', '=', jobId)
    .where('stage_index', '=', stageIndex)
    .where('slot_index', '=', slotIndex)
    .executeTakeFirst();
  return row ? getAttachment(database, row.id) : null;
}
