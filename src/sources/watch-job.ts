import type { Logger } from 'pino';
import { Observable } from 'rxjs';
import {
  decodeNotification,
  FINAL_JOB_STATUSES,
  JobNotFoundError,
  PROGRESS_CHANNEL,
  readJobSnapshot,
  type Database,
  type NotifiedEvent,
  type StoredJobSnapshot,
} from '../db/index.js';

/** A job's state as read from the database when watching starts (one consistent read, see `readJobSnapshot`). */
export interface JobSnapshot extends StoredJobSnapshot {
  readonly type: 'snapshot';
}

export interface WatchJobOptions {
  /** Told (`warn`) about each payload on the progress channel that is not a valid notification; it is skipped. Default: none (skipped silently). */
  readonly logger?: Pick<Logger, 'warn'> | undefined;
}

/** What {@link watchJob} emits: one snapshot, then live notifications. */
export type WatchedEvent = JobSnapshot | NotifiedEvent;

/**
 * Watches a job from any process that can reach its database.
 *
 * Emits a {@link JobSnapshot} read from the database, then every progress
 * notification of the job (LISTEN on the progress channel) in the order
 * published, and completes after `job:finished`, or right after the snapshot
 * when the job has already ended. Errors with {@link JobNotFoundError} for an
 * unknown job.
 *
 * LISTEN starts before the snapshot is read, so nothing published in between
 * is lost; notifications that arrive before the snapshot is emitted are held
 * back, and a `slot:delivered` the snapshot already holds is dropped.
 *
 * A payload that does not decode (`decodeNotification`: malformed, foreign, or
 * another version's shape) is skipped and reported to `options.logger`.
 *
 * Cold: each subscription LISTENs on its own (PostgreSQL: its own connection)
 * and stops listening when it completes, errors or is unsubscribed.
 *
 * ```
 * db:       (snapshot) --- d5 --- d6 --- finished
 * output:   s ------------ d5 --- d6 --- f|
 * ```
 */
export function watchJob(database: Database, jobId: string, options: WatchJobOptions = {}): Observable<WatchedEvent> {
  return new Observable<WatchedEvent>((subscriber) => {
    let stop: (() => Promise<void>) | null = null;
    let closed = false;
    let snapshotSent = false;
    let seen = new Set<string>();
    const early: NotifiedEvent[] = [];

    const release = (): void => {
      const s = stop;
      stop = null;
      // Unlisten errors are not the watcher's business once it is done.
      if (s) void s().catch(() => {});
    };
    const deliver = (event: NotifiedEvent): void => {
      if (event.type === 'slot:delivered') {
        if (seen.has(event.attachId)) return;
        seen.add(event.attachId);
      }
      subscriber.next(event);
      if (event.type === 'job:finished') subscriber.complete();
    };

    (async () => {
      const unlisten = await database.listen(PROGRESS_CHANNEL, (payload) => {
        const event = decodeNotification(payload);
        if (event === null) {
          options.logger?.warn({ channel: PROGRESS_CHANNEL, watchedJobId: jobId, bytes: Buffer.byteLength(payload, 'utf8') }, 'skipped a progress notification that is not valid');
          return;
        }
        if (event.jobId !== jobId || subscriber.closed) return;
        if (snapshotSent) deliver(event);
        else early.push(event);
      });
      if (closed) {
        await unlisten();
        return;
      }
      stop = unlisten;

      const snapshot = await readSnapshot(database, jobId);
      if (subscriber.closed) return;
      if (snapshot === null) {
        subscriber.error(new JobNotFoundError(jobId));
        return;
      }
      seen = new Set(snapshot.attachIds);
      snapshotSent = true;
      subscriber.next(snapshot);
      if (FINAL_JOB_STATUSES.includes(snapshot.status)) {
        subscriber.complete();
        return;
      }
      for (const event of early.splice(0)) {
        if (subscriber.closed) break;
        deliver(event);
      }
    })().catch((error: unknown) => subscriber.error(error));

    return () => {
      closed = true;
      release();
    };
  });
}

/** The job's {@link JobSnapshot}, or null when it does not exist. */
export async function readSnapshot(database: Database, jobId: string): Promise<JobSnapshot | null> {
  const snapshot = await readJobSnapshot(database, jobId);
  return snapshot === null ? null : { type: 'snapshot', ...snapshot };
}
