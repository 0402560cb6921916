import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type { Delivery } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { JobNotFoundError, JobStateError, LeaseLostError } from '../errors.js';
import { FINAL_JOB_STATUSES } from '../schema.js';
import { assertCount } from '../internal/assert.js';
import { jsonb } from '../internal/json.js';
import { missingSlot } from '../internal/stage-slot.js';
import { writeWebhookOutbox } from '../internal/webhook-outbox.js';
import { JOB_EVENTS_CHANNEL, jobEventsAppendedPrefix } from '../notifications.js';

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
 * 2. the slot row, by an upsert that returns its attach id: of two racing deliveries of
 *    one slot, the second waits and then sees the first one's attach id (an upsert's
 *    conflict path reads the newest committed row, whatever the statement's snapshot).
 *    The unique constraints on `slots.attach_id`, `attachments (job, stage, slot)` and
 *    the capture index are the backstop if this code is ever wrong.
 * 3. the account row, implicitly, by the `reserved - price` update.
 * The event's number comes from the job row (as `appendJobEvents` takes it), already
 * locked in step 1: no new lock, and the job's deliveries number their events in commit order.
 *
 * Round trips (it runs once per delivered image, on the hot path): `begin`, the job, the
 * slot, then every write in one statement (data-modifying CTEs: attach record, slot,
 * capture, account, counters, the event numbered and logged with the counts that
 * statement commits, its NOTIFY), then `commit`; a job with a webhook adds its outbox
 * write. Foreign keys between the rows of that statement are checked at its end.
 */
export async function deliverSlot(database: Database, options: DeliverSlotOptions): Promise<Delivery> {
  const { jobId, stageIndex, slotIndex, attempt } = options;
  assertCount('attempt', attempt, 1);
  assertCount('byteSize', options.byteSize);

  return database.db.transaction().execute(async (trx) => {
    const job = await trx
      .selectFrom('jobs')
      .select(['user_id', 'price_per_image', 'status', 'lease_owner', sql<unknown>`spec -> 'webhook'`.as('webhook')])
      // The stage's size never changes: reading it with the job costs no round trip.
      .select((eb) => eb.selectFrom('stages').select('quantity').where('job_id', '=', jobId).where('stage_index', '=', stageIndex).as('quantity'))
      .where('id', '=', jobId)
      .forUpdate()
      .executeTakeFirst();
    if (!job) throw new JobNotFoundError(jobId);
    if (options.leaseOwner !== undefined && job.lease_owner !== options.leaseOwner) throw new LeaseLostError(jobId, options.leaseOwner, job.lease_owner);
    const missing = missingSlot(jobId, stageIndex, slotIndex, job.quantity);
    if (missing) throw missing;

    const slot = await trx
      .insertInto('slots')
      .values({ job_id: jobId, stage_index: stageIndex, slot_index: slotIndex })
      // A no-op update: it takes the row lock and returns the newest committed attach id.
      .onConflict((oc) => oc.columns(['job_id', 'stage_index', 'slot_index']).doUpdateSet({ attach_id: sql.ref('slots.attach_id') }))
      .returning('attach_id')
      .executeTakeFirstOrThrow();
    if (slot.attach_id !== null) return { attachId: slot.attach_id, duplicate: true };
    if (FINAL_JOB_STATUSES.includes(job.status)) {
      throw new JobStateError(jobId, `is ${job.status}; its reservation is released, no more deliveries`);
    }

    const attachId = randomUUID();
    const price = job.price_per_image;
    // The event without its counts: the statement adds the ones it commits.
    const event = { type: 'slot:delivered', jobId, stage: stageIndex, slot: slotIndex, attempt, attachId } as const;
    const { rows } = await sql<{ seq: number; delivered: number; total: number; stage_delivered: number; quantity: number }>`
      with attachment as (
        insert into attachments (id, user_id, storage_key, content_type, byte_size, width, height, job_id, stage_index, slot_index, attempt)
        values (${attachId}, ${job.user_id}, ${options.storageKey}, ${options.contentType}, ${options.byteSize}, ${options.width}, ${options.height}, ${jobId}, ${stageIndex}, ${slotIndex}, ${attempt})
      ), slot as (
        update slots set attach_id = ${attachId}, filled_at = now(), attempts_used = greatest(attempts_used, ${attempt}::int)
        where job_id = ${jobId} and stage_index = ${stageIndex} and slot_index = ${slotIndex}
      ), capture as (
        insert into credit_ledger (user_id, kind, amount, job_id, attach_id) values (${job.user_id}, 'capture', ${price}, ${jobId}, ${attachId})
      ), account as (
        update credit_accounts set reserved = reserved - ${price}, updated_at = now() where user_id = ${job.user_id}
      ), job as (
        update jobs set delivered = delivered + 1, credits_captured = credits_captured + ${price}, updated_at = now(), event_seq = event_seq + 1
        where id = ${jobId}
        returning event_seq, delivered, total
      ), stage as (
        update stages set delivered = delivered + 1 where job_id = ${jobId} and stage_index = ${stageIndex}
        returning delivered, quantity
      ), logged as (
        insert into job_events (job_id, seq, type, payload)
        select cast(${jobId} as text), job.event_seq, cast(${event.type} as text), ${jsonb(event)} || jsonb_build_object(
          'stageProgress', jsonb_build_object('delivered', stage.delivered, 'total', stage.quantity),
          'progress', jsonb_build_object('delivered', job.delivered, 'total', job.total))
        from job, stage
      )
      select job.event_seq as seq, job.delivered, job.total, stage.delivered as stage_delivered, stage.quantity,
        pg_notify(${JOB_EVENTS_CHANNEL}, cast(${jobEventsAppendedPrefix(jobId)} as text) || cast(job.event_seq as text) || '}')
      from job, stage`.execute(trx);
    const counted = rows[0];
    if (!counted) throw new JobStateError(jobId, `stage ${stageIndex} vanished during a delivery`);
    // The webhook outbox (a job with a webhook only) reports the event as it was logged.
    await writeWebhookOutbox(
      trx,
      { jobId, userId: job.user_id, webhook: job.webhook },
      [{ ...event, stageProgress: { delivered: counted.stage_delivered, total: counted.quantity }, progress: { delivered: counted.delivered, total: counted.total } }],
      counted.seq,
    );
    return { attachId, duplicate: false };
  });
}
