import type { Database } from '../database.js';
import { InvalidJobEventError } from '../errors.js';
import { assertCount } from '../internal/assert.js';
import { checkNotification, type NotifiedEvent } from '../notifications.js';

/** One event of a job's log: its number in the job (1, 2, 3, ... in commit order, no holes) and the event as notified. */
export interface JobEventEnvelope {
  readonly seq: number;
  readonly event: NotifiedEvent;
}

/** Which part of a job's log {@link readJobEvents} reads. */
export interface ReadJobEventsOptions {
  /** Only events numbered above this (a client's last seen `seq`). Default 0: from the first. */
  readonly afterSeq?: number | undefined;
  /** At most this many events. Default {@link DEFAULT_JOB_EVENTS_PAGE} (500). */
  readonly limit?: number | undefined;
}

/** Events {@link readJobEvents} returns at most by default. */
export const DEFAULT_JOB_EVENTS_PAGE = 500;

/**
 * Reads job `jobId`'s logged events numbered above `afterSeq`, in `seq` order, at most
 * `limit` of them (fewer than `limit`: the log ends there, for now). An unknown job has
 * no events (`[]`); ask `getJobStatus` to tell it from a quiet one.
 *
 * Numbers are taken under the job row lock in the transaction that commits each event
 * (`appendJobEvents`), so a read that returns event `n` has every event before it too:
 * reading again after the last `seq` seen misses nothing and repeats nothing.
 *
 * One plain read by primary key range, no lock.
 *
 * @throws {InvalidJobEventError} for a stored payload that does not check as a
 *   {@link NotifiedEvent} (written by another version, or a bug): the log promises no
 *   gap, so a row that cannot be read stops the reader rather than being skipped.
 */
export async function readJobEvents(database: Database, jobId: string, options: ReadJobEventsOptions = {}): Promise<JobEventEnvelope[]> {
  const afterSeq = options.afterSeq ?? 0;
  const limit = options.limit ?? DEFAULT_JOB_EVENTS_PAGE;
  assertCount('afterSeq', afterSeq);
  assertCount('limit', limit, 1);
  const rows = await database.db
    .selectFrom('job_events')
    .select(['seq', 'type', 'payload'])
    .where('job_id', '=', jobId)
    .where('seq', '>', afterSeq)
    .orderBy('seq')
    .limit(limit)
    .execute();
  return rows.map((row) => {
    const event = checkNotification(row.payload);
    if (event === null || event.type !== row.type || event.jobId !== jobId) throw new InvalidJobEventError(jobId, row.seq, row.type);
    return { seq: row.seq, event };
  });
}
