import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type { Delivery } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { JobNotFoundError, JobStateError, LeaseLostError } from '../errors.js';
import { FINAL_JOB_STATUSES } from '../schema.js';
import { assertCount } from '../internal/assert.js';
import { appendJobEvents } from '../internal/append-job-events.js';
import { assertSlotExists } from '../internal/stage-slot.js';

export interface DeliverSlotOptions {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly slotIndex: number;
  /** The attempt that produced the image. */
  readonly attempt: number;
  /** Where the (already stored) object lives. */
  readonly storageKey: string;
  readonly contentType: string;
  readonly byteSize: number;
  readonly width: number | null;
  readonly height: number | null;
  /**
   * The run's lease owner: when given, the delivery commits only while the job's lease is
   * still this owner's (checked under the job row lock), else {@link LeaseLostError}.
   */
  readonly leaseOwner?: string | undefined;
}

/**
 * Fills a slot: in ONE transaction, inserts the attach record, sets the slot's
 * attach id, captures one image's price out of the job's reservation (ledger
 * `capture`, unique per attach record), bumps the job's and the stage's
 * delivered counters and appends `slot:delivered` to the job's event log (with
 * the counts it commits). All or nothing.
 *
 * If the slot is already filled, nothing is written, no credit moves, and the
 * existing attach id comes back with `duplicate: true`. A runner that lost the job's
 * lease (`leaseOwner`) delivers nothing: {@link LeaseLostError}.
 *
 * Locking, in this order (every operation that takes several of these locks
 * takes them in the same order, so they cannot deadlock: job -> slot -> account):
 * 1. the job row `for update`: a delivery must not commit after `finishJob`
 *    released the rest of the reservation, and `finishJob` takes the same lock;
 *    deliveries of one job are serialised here anyway by the counter update.
 * 2. the slot row `for update`: of two racing deliveries of one slot, the second
 *    waits and then sees the first one's attach id. The unique constraints on
 *    `slots.attach_id`, `attachments (job, stage, slot)` and the capture index are
 *    the backstop if this code is ever wrong.
 * 3. the account row, implicitly, by the `reserved - price` update.
 * The event's number comes from the job row (`appendJobEvents`), already locked in
 * step 1: no new lock, and the job's deliveries number their events in commit order.
 */
export async function deliverSlot(database: Database, options: DeliverSlotOptions): Promise<Delivery> {
  const { jobId, stageIndex, slotIndex, attempt } = options;
  assertCount('attempt', attempt, 1);
  assertCount('byteSize', options.byteSize);

  return database.db.transaction().execute(async (trx) => {
    const job = await trx
      .selectFrom('jobs')
      .select(['user_id', 'price_per_image', 'status', 'lease_owner'])
      .where('id', '=', jobId)
      .forUpdate()
      .executeTakeFirst();
    if (!job) throw new JobNotFoundError(jobId);
    if (options.leaseOwner !== undefined && job.lease_owner !== options.leaseOwner) throw new LeaseLostError(jobId, options.leaseOwner, job.lease_owner);
    await assertSlotExists(trx, jobId, stageIndex, slotIndex);

    const slotKey = { job_id: jobId, stage_index: stageIndex, slot_index: slotIndex };
    await trx.insertInto('slots').values(slotKey).onConflict((oc) => oc.columns(['job_id', 'stage_index', 'slot_index']).doNothing()).execute();
    const slot = await trx
      .selectFrom('slots')
      .select('attach_id')
      .where('job_id', '=', jobId)
      .where('stage_index', '=', stageIndex)
      .where('slot_index', '=', slotIndex)
      .forUpdate()
      .executeTakeFirstOrThrow();
    if (slot.attach_id !== null) return { attachId: slot.attach_id, duplicate: true };
    if (FINAL_JOB_STATUSES.includes(job.status)) {
      throw new JobStateError(jobId, `is ${job.status}; its reservation is released, no more deliveries`);
    }

    const attachId = randomUUID();
    const price = job.price_per_image;
    await trx
      .insertInto('attachments')
      .values({
        id: attachId,
        user_id: job.user_id,
        storage_key: options.storageKey,
        content_type: options.contentType,
        byte_size: options.byteSize,
        width: options.width,
        height: options.height,
        ...slotKey,
        attempt,
      })
      .execute();
    await trx
      .updateTable('slots')
      .set({ attach_id: attachId, filled_at: sql`now()`, attempts_used: sql`greatest(attempts_used, ${attempt}::int)` })
      .where('job_id', '=', jobId)
      .where('stage_index', '=', stageIndex)
      .where('slot_index', '=', slotIndex)
      .execute();
    await trx
      .insertInto('credit_ledger')
      .values({ user_id: job.user_id, kind: 'capture', amount: price, job_id: jobId, attach_id: attachId })
      .execute();
    await trx
      .updateTable('credit_accounts')
      .set((eb) => ({ reserved: eb('reserved', '-', price), updated_at: sql`now()` }))
      .where('user_id', '=', job.user_id)
      .execute();
    const progress = await trx
      .updateTable('jobs')
      .set((eb) => ({ delivered: eb('delivered', '+', 1), credits_captured: eb('credits_captured', '+', price), updated_at: sql`now()` }))
      .where('id', '=', jobId)
      .returning(['delivered', 'total'])
      .executeTakeFirstOrThrow();
    const stageProgress = await trx
      .updateTable('stages')
      .set((eb) => ({ delivered: eb('delivered', '+', 1) }))
      .where('job_id', '=', jobId)
      .where('stage_index', '=', stageIndex)
      .returning(['delivered', 'quantity'])
      .executeTakeFirstOrThrow();
    // The counts are the ones this transaction commits, so the log's progress is
    // monotone in `seq` whatever order concurrent deliveries reached the lock in.
    await appendJobEvents(trx, jobId, [
      {
        type: 'slot:delivered',
        jobId,
        stage: stageIndex,
        slot: slotIndex,
        attempt,
        attachId,
        stageProgress: { delivered: stageProgress.delivered, total: stageProgress.quantity },
        progress: { delivered: progress.delivered, total: progress.total },
      },
    ]);
    return { attachId, duplicate: false };
  });
}
