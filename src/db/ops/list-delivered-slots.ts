import type { Database } from '../database.js';

/** A filled slot: where its image is (`GET /v1/jobs/:id/images/:stage/:slot`). */
export interface DeliveredSlot {
  readonly stage: number;
  readonly slot: number;
  readonly attachId: string;
}

/** Job `jobId`'s filled slots, stage order then slot order. A plain read, no lock. */
export async function listDeliveredSlots(database: Database, jobId: string): Promise<DeliveredSlot[]> {
  const rows = await database.db
    .selectFrom('slots')
    .select(['stage_index', 'slot_index', 'attach_id'])
    .where('job_id', '=', jobId)
    .where('attach_id', 'is not', null)
    .orderBy('stage_index')
    .orderBy('slot_index')
    .execute();
  return rows.map((r) => ({ stage: r.stage_index, slot: r.slot_index, attachId: r.attach_id as string }));
}
