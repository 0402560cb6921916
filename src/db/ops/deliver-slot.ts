import { randomUUID } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Delivery } from '../../domain/ports.js';
import type { Database } from '../database.js';
import { JobNotFoundError, JobStateError, LeaseLostError } from '../errors.js';
import { FINAL_JOB_STATUSES, type DatabaseSchema } from '../schema.js';
import { assertCount } from '../internal/assert.js';
import { fixedStatement } from '../internal/fixed-statement.js';
import { missingSlot } from '../internal/stage-slot.js';
import { writeWebhookOutbox } from '../internal/webhook-outbox.js';
import { JOB_EVENTS_CHANNEL, jobEventsAppendedPrefix } from '../notifications.js';

/** The final job statuses as the function takes them (built once: it is on the hot path). */
const FINAL_STATUSES = JSON.stringify(FINAL_JOB_STATUSES);

/**
 * The call, compiled once (it runs once per delivered image). jsonb arguments are bound as
 * text and cast, as `jsonb()` binds them (`pg` and PGlite bind text the same way).
 */
const DELIVER_SLOT = fixedStatement<DeliverSlotRow>(`select * from deliver_slot(
  $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
  cast(cast($13 as text) as jsonb), cast(cast($14 as text) as jsonb), $15, $16, $17)`);

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
 * Round trips (it runs once per delivered image, on the hot path): ONE, the call of the
 * `deliver_slot` function (migration 0013), which runs the statements above in the server
 * in that order, outside any transaction (the call commits on its own): the job row, the
 * slot upsert, then every write in one statement (data-modifying CTEs: attach record,
 * slot, capture, account, counters, the event numbered and logged with the counts that
 * statement commits, its NOTIFY). It reports what it found and this function throws the
 * errors. A job with a webhook: the function writes nothing and says so, and the delivery
 * runs again in a transaction that adds the outbox write (`begin`, the call, the outbox,
 * `commit`). Foreign keys between the rows of that statement are checked at its end.
 */
export async function deliverSlot(database: Database, options: DeliverSlotOptions): Promise<Delivery> {
  const { jobId, stageIndex, slotIndex, attempt } = options;
  assertCount('attempt', attempt, 1);
  assertCount('byteSize', options.byteSize);

  const attachId = randomUUID();
  // The event without its counts: the statement adds the ones it commits.
  const event = { type: 'slot:delivered', jobId, stage: stageIndex, slot: slotIndex, attempt, attachId } as const;
  const call = (db: Kysely<DatabaseSchema>, outboxInCaller: boolean) =>
    DELIVER_SLOT(db, [
      jobId, Number.isInteger(stageIndex) ? stageIndex : -1, Number.isInteger(slotIndex) ? slotIndex : -1, attempt,
      options.storageKey, options.contentType, options.byteSize, options.width, options.height,
      options.leaseOwner !== undefined, options.leaseOwner ?? null,
      attachId, JSON.stringify(event), FINAL_STATUSES,
      JOB_EVENTS_CHANNEL, jobEventsAppendedPrefix(jobId), outboxInCaller,
    ]).then(({ rows }) => rows[0], (error: unknown) => Promise.reject(deliveryError(jobId, stageIndex, error)));

  const found = await call(database.db, false);
  if (found?.outcome !== 'webhook') return delivery(options, found);
  return database.db.transaction().execute(async (trx) => {
    const row = await call(trx, true);
    const done = delivery(options, row);
    if (row?.outcome !== 'delivered') return done; // a duplicate: nothing written, nothing to report
    // The webhook outbox reports the event as it was logged.
    await writeWebhookOutbox(
      trx,
      { jobId, userId: row.job_user_id!, webhook: row.job_webhook },
      [{ ...event, stageProgress: { delivered: row.stage_delivered!, total: row.stage_quantity! }, progress: { delivered: row.job_delivered!, total: row.job_total! } }],
      row.logged_seq!,
    );
    return done;
  });
}

/** A row of `deliver_slot(...)`: what it found, and what it committed when it delivered. */
interface DeliverSlotRow {
  readonly outcome: 'no_job' | 'lease_lost' | 'no_slot' | 'webhook' | 'duplicate' | 'delivered';
  readonly found_attach_id: string | null;
  readonly job_user_id: string | null;
  readonly job_lease_owner: string | null;
  readonly stage_quantity: number | null;
  readonly job_webhook: unknown;
  readonly logged_seq: number | null;
  readonly job_delivered: number | null;
  readonly job_total: number | null;
  readonly stage_delivered: number | null;
}

/** The delivery `deliver_slot` reported, or the error for what it found instead. */
function delivery(options: DeliverSlotOptions, row: DeliverSlotRow | undefined): Delivery {
  const { jobId, stageIndex, slotIndex } = options;
  switch (row?.outcome) {
    case 'delivered':
      return { attachId: row.found_attach_id!, duplicate: false };
    case 'duplicate':
      return { attachId: row.found_attach_id!, duplicate: true };
    case 'no_job':
      throw new JobNotFoundError(jobId);
    case 'lease_lost':
      throw new LeaseLostError(jobId, options.leaseOwner!, row.job_lease_owner);
    case 'no_slot':
      throw missingSlot(jobId, stageIndex, slotIndex, row.stage_quantity) ?? new JobStateError(jobId, `stage ${stageIndex} slot ${slotIndex} was refused`);
    default:
      throw new JobStateError(jobId, `deliver_slot answered ${row === undefined ? 'no row' : `'${row.outcome}'`}`);
  }
}

/** The function's own SQLSTATEs as the errors the operation always threw; any other error as it is. */
function deliveryError(jobId: string, stageIndex: number, error: unknown): unknown {
  const code = (error as { code?: unknown } | null)?.code;
  if (code === 'IG001') return new JobStateError(jobId, `is ${String((error as { detail?: unknown }).detail)}; its reservation is released, no more deliveries`);
  if (code === 'IG002') return new JobStateError(jobId, `stage ${stageIndex} vanished during a delivery`);
  return error;
}
