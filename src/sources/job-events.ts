import type { Logger } from 'pino';
import {
  EMPTY,
  asyncScheduler,
  concat,
  concatMap,
  connect,
  defer,
  filter,
  from,
  interval,
  merge,
  mergeMap,
  of,
  switchMap,
  take,
  takeWhile,
  tap,
  throwError,
  type Observable,
  type SchedulerLike,
} from 'rxjs';
import {
  DEFAULT_JOB_EVENTS_PAGE,
  decodeJobEventsAppended,
  FINAL_JOB_STATUSES,
  getJobStatus,
  JOB_EVENTS_CHANNEL,
  JobNotFoundError,
  readJobEvents,
  retryTransient,
  type Database,
  type JobEventEnvelope,
} from '../db/index.js';
import { exhaustMapWithTrailing } from '../operators/exhaust-map-with-trailing.js';
import { listenChannel, type Heard } from './listen-channel.js';

export type { JobEventEnvelope } from '../db/index.js';

/** How often {@link followJobEvents} reads the log even when nothing was heard, by default (ms). */
export const DEFAULT_FOLLOW_POLL_MS = 2000;

/** Per-call options of {@link followJobEvents}. */
export interface FollowJobEventsOptions {
  /** Emit only events numbered above this: a client's last seen `seq` (SSE `Last-Event-ID`). Default 0: from the first. */
  readonly afterSeq?: number | undefined;
  /**
   * Reads the log this often even when no notification came (ms), the safety net for
   * notifications that never arrive: a writer in another process on PGlite, a LISTEN
   * connection that broke. Default {@link DEFAULT_FOLLOW_POLL_MS} (2,000).
   */
  readonly pollMs?: number | undefined;
  /** Events read per query. Default `DEFAULT_JOB_EVENTS_PAGE` (500). */
  readonly pageSize?: number | undefined;
  /** Clock of the periodic read. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike | undefined;
  /** Told (`warn`) about each payload on the job events channel that does not decode; it is skipped. Default: none. */
  readonly logger?: Pick<Logger, 'warn'> | undefined;
}

/** Ends the stream of one look: the job had ended before it, so what it read is all there is. */
const ENDED = Symbol('ended');

/**
 * Follows a job's event log (`job_events`) from any process that can reach its
 * database: every logged event numbered above `afterSeq`, each once, in `seq` order,
 * then live as they commit. A client that reconnects with the last `seq` it saw
 * misses nothing and sees nothing twice, across crashes and processes.
 *
 * The log holds `slot:delivered`, `attempt:failed`, `job:cancel-requested` as they
 * commit, each stage's end (`stage:completed` / `stage:short`) and `job:finished` when
 * the job ends (`finishJob`); `job:started` and `attempt:started` are not logged.
 *
 * - **How**: LISTEN on `JOB_EVENTS_CHANNEL` first, then read the log after `afterSeq`
 *   and emit it; then read again after the last emitted `seq` whenever a notification
 *   says the job's log grew past it, and every `pollMs` anyway. The notification only
 *   wakes the reader: events always come from the table, whose numbers commit in order
 *   with no holes, so a notification lost, late or out of order costs latency, never
 *   an event. Reads never overlap; signals during a read coalesce into one read after it.
 * - **Completion**: after emitting every event of a job that had ended when the read
 *   began: normally right after `job:finished` (a job ended before its first logged
 *   event, e.g. before the log existed, completes with what there is, maybe nothing).
 * - **Errors**: {@link JobNotFoundError} for an unknown job (or one deleted meanwhile);
 *   `InvalidJobEventError` for a stored event that does not check; a database error
 *   once `retryTransient` gave up. A notification that does not decode is skipped and
 *   told to `options.logger`.
 * - **Cold**: each subscription LISTENs on its own (PostgreSQL: its own connection) and
 *   stops listening when it completes, errors or is unsubscribed.
 *
 * ```
 * log:     1 2 3 ------ 4 ------- 5 --------------- 6        (6 = job:finished)
 * heard:   L ---------- n4 ------ ·  -- poll ------ n6       (the notice of 5 was lost)
 * output:  3 ---------- 4 ------------- 5 --------- 6|       (afterSeq: 2)
 * ```
 *
 * @example
 * followJobEvents(database, jobId, { afterSeq: Number(lastEventId) || 0 })
 *   .subscribe(({ seq, event }) => reply.raw.write(`id: ${seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`));
 */
export function followJobEvents(database: Database, jobId: string, options: FollowJobEventsOptions = {}): Observable<JobEventEnvelope> {
  const pollMs = options.pollMs ?? DEFAULT_FOLLOW_POLL_MS;
  const pageSize = options.pageSize ?? DEFAULT_JOB_EVENTS_PAGE;
  const scheduler = options.scheduler ?? asyncScheduler;
  if (!(pollMs > 0)) throw new RangeError(`pollMs must be above 0, got ${pollMs}`);
  return defer(() => {
    let lastSeq = options.afterSeq ?? 0;

    /** Every event after `afterSeq`, a page at a time. */
    const eventsAfter = (afterSeq: number): Observable<JobEventEnvelope> =>
      defer(() => retryTransient(() => readJobEvents(database, jobId, { afterSeq, limit: pageSize }))).pipe(
        mergeMap((page) => {
          const last = page.at(-1);
          return last === undefined || page.length < pageSize ? from(page) : concat(from(page), eventsAfter(last.seq));
        }),
      );

    /**
     * One look: the job's status, then every event after the last one emitted. The status
     * is read first: a job already ended then has every event committed before the rows
     * are read, `job:finished` included, so the look that follows reads them all.
     */
    const look = (): Observable<JobEventEnvelope | typeof ENDED> =>
      defer(() => retryTransient(() => getJobStatus(database, jobId))).pipe(
        concatMap((status) => {
          if (status === null) return throwError(() => new JobNotFoundError(jobId));
          let sawFinished = false;
          const events = eventsAfter(lastSeq).pipe(
            tap((envelope) => {
              lastSeq = envelope.seq;
              sawFinished = envelope.event.type === 'job:finished';
            }),
          );
          if (FINAL_JOB_STATUSES.includes(status)) return concat(events, of(ENDED));
          // The job ended between the status read and the events read: its job:finished was
          // read, and its notification (no newer than what was read) will not bring another
          // look. Look again: the status, committed with job:finished, now says it ended.
          return concat(events, defer(() => (sawFinished ? look() : EMPTY)));
        }),
      );

    /** Whether what was heard may mean new events of this job. */
    const worthALook = (heard: Heard): boolean => {
      if (heard.type === 'listening') return true;
      const appended = decodeJobEventsAppended(heard.payload);
      if (appended === null) {
        options.logger?.warn({ channel: JOB_EVENTS_CHANNEL, followedJobId: jobId, bytes: Buffer.byteLength(heard.payload, 'utf8') }, 'skipped a job events notification that is not valid');
        return false;
      }
      return appended.jobId === jobId && appended.seq > lastSeq;
    };

    return listenChannel(database, JOB_EVENTS_CHANNEL).pipe(
      connect((heard$) =>
        merge(
          heard$.pipe(filter(worthALook)),
          // The periodic look starts once LISTEN is in place, like the first one.
          heard$.pipe(
            filter((heard) => heard.type === 'listening'),
            take(1),
            switchMap(() => interval(pollMs, scheduler)),
          ),
        ),
      ),
      exhaustMapWithTrailing(look),
      takeWhile((item): item is JobEventEnvelope => item !== ENDED),
    );
  });
}
