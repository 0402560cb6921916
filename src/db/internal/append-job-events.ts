import { sql, type Transaction } from 'kysely';
import { encodeJobEventsAppended, JOB_EVENTS_CHANNEL, type NotifiedEvent } from '../notifications.js';
import type { DatabaseSchema } from '../schema.js';
import { jsonb } from './json.js';
import { writeWebhookOutbox } from './webhook-outbox.js';

/**
 * Appends `events` to job `jobId`'s event log (`job_events`), numbered on from
 * `jobs.event_seq`, and announces them on {@link JOB_EVENTS_CHANNEL}; all inside `trx`,
 * the transaction that commits the fact the events report, so an event is in the log
 * if and only if its fact committed. Returns the last number (the job's `event_seq`).
 *
 * Why the number comes from the job row and not from a sequence (`bigserial`): a
 * sequence hands out its value when the row is inserted, not when the transaction
 * commits. Two deliveries of one job can take 41 and 42 and commit 42 first; a reader
 * that sees 42 and resumes "after 42" never sees 41 when it commits, and a rolled-back
 * transaction leaves a hole a reader cannot tell from a row still to come. Here the
 * number is taken by `update jobs set event_seq = event_seq + n`, which holds the job
 * row lock until commit: the job's next append waits for this one to commit (or roll
 * back, undoing its numbers), so a job's numbers commit in order and without holes, and
 * a reader that has seen `n` has seen `1..n`.
 *
 * Locking: the job row. Every caller takes it before any other row lock (`deliverSlot`
 * and `finishJob` hold it from their first statement, `finishAttempt` and
 * `requestCancel` take it first), the order every operation uses (job -> slot ->
 * account), so appending adds no new lock order. The insert's foreign key check needs
 * only the key-share lock on the same job row, which this transaction already holds.
 *
 * Webhooks: for a job whose spec has a `webhook`, the same transaction writes one outbox
 * row (`webhook_deliveries`) per appended event the webhook subscribes to
 * (`writeWebhookOutbox`): a delivery is written if and only if its event commits.
 */
export async function appendJobEvents(trx: Transaction<DatabaseSchema>, jobId: string, events: readonly NotifiedEvent[]): Promise<number> {
  if (events.length === 0) throw new RangeError(`no events to append to job ${jobId}`);
  const foreign = events.find((event) => event.jobId !== jobId);
  if (foreign) throw new TypeError(`event ${foreign.type} is for job ${foreign.jobId}, not ${jobId}`);
  const { event_seq: last, user_id: userId, webhook } = await trx
    .updateTable('jobs')
    .set((eb) => ({ event_seq: eb('event_seq', '+', events.length) }))
    .where('id', '=', jobId)
    .returning(['event_seq', 'user_id', sql<unknown>`spec -> 'webhook'`.as('webhook')])
    .executeTakeFirstOrThrow();
  const first = last - events.length + 1;
  // The rows and their NOTIFY in one statement (one round trip).
  await trx
    .with('logged', (db) => db.insertInto('job_events').values(events.map((event, index) => ({ job_id: jobId, seq: first + index, type: event.type, payload: jsonb(event) }))))
    .selectNoFrom(sql`pg_notify(${JOB_EVENTS_CHANNEL}, ${encodeJobEventsAppended({ jobId, seq: last })})`.as('notified'))
    .execute();
  // The webhook outbox: written with the events it reports (see webhook-outbox.ts).
  await writeWebhookOutbox(trx, { jobId, userId, webhook }, events, first);
  return last;
}
