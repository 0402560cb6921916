import type { Observable } from 'rxjs';
import { getJobEventSeq, JobNotFoundError, retryTransient, type Database, type JobEventEnvelope } from '../db/index.js';
import { followJobEvents } from '../sources/job-events.js';
import { visibleJob, type Caller } from './caller.js';
import { jobSummary, type JobSummary } from './job-summary.js';

/** The events a client follows (`GET /v1/jobs/:id/events`); the rest of the log only moves its position on. */
export const FOLLOWED_EVENT_TYPES: ReadonlySet<string> = new Set(['attempt:failed', 'slot:delivered', 'stage:completed', 'stage:short', 'job:finished']);

/** Where a client starts following a job. */
export interface JobFollow {
  /** The job's summary and the number of the last event it reflects; null on a resume (`lastEventId` given). */
  readonly snapshot: { readonly seq: number; readonly summary: JobSummary } | null;
  /** Events follow after this number. */
  readonly afterSeq: number;
  /** The job's events after `afterSeq`, each once, live; completes after `job:finished` (at once for a job that had ended). */
  follow(afterSeq: number): Observable<JobEventEnvelope>;
}

export interface FollowJobOptions {
  /** The last event number the client saw (SSE `Last-Event-ID`): resume after it, with no snapshot. */
  readonly lastEventId?: number | undefined;
  /** How often the log is read when no notification came (ms). Default `followJobEvents`'s (2 s). */
  readonly pollMs?: number | undefined;
}

/** Snapshot reads tried before settling for one that may already reflect an event or two that follow it. */
const SNAPSHOT_TRIES = 3;

/**
 * Starts following the caller's job: on a first connection a snapshot (the job's
 * summary) and the number of the last event it reflects; on a resume (`lastEventId`)
 * no snapshot, only the events after it. The events come from the job's durable log
 * (`followJobEvents`), so a client that reconnects with the last `id:` it saw gets every
 * event it missed, none twice.
 *
 * The snapshot's number is read before and after the summary; when they differ an event
 * committed meanwhile, and the summary is read again (up to 3 times). A summary read
 * under a steady stream of events may still reflect the first events after its number:
 * they carry absolute counts (`progress`), so applying one twice changes nothing.
 *
 * @throws {JobNotFoundError} no such job, or another user's.
 */
export async function followJob(database: Database, caller: Caller, jobId: string, options: FollowJobOptions = {}): Promise<JobFollow> {
  await visibleJob(database, caller, jobId);
  const follow = (afterSeq: number) => followJobEvents(database, jobId, { afterSeq, pollMs: options.pollMs });
  if (options.lastEventId !== undefined) return { snapshot: null, afterSeq: options.lastEventId, follow };
  const { seq, value: summary } = await readAtEventSeq(database, jobId, () => jobSummary(database, jobId));
  return { snapshot: { seq, summary }, afterSeq: seq, follow };
}

/**
 * `read()` of job `jobId` and the number of the last logged event it reflects: the
 * number is read before and after; when they differ an event committed meanwhile and
 * `read` runs again (up to 3 times). A read under a steady stream of events may still
 * reflect the first events after its number: callers apply events idempotently.
 *
 * @throws {JobNotFoundError} no such job.
 */
export async function readAtEventSeq<T>(database: Database, jobId: string, read: () => Promise<T>): Promise<{ seq: number; value: T }> {
  const seqOf = async (): Promise<number> => {
    const seq = await retryTransient(() => getJobEventSeq(database, jobId));
    if (seq === null) throw new JobNotFoundError(jobId);
    return seq;
  };
  let seq = await seqOf();
  for (let tries = 1; ; tries++) {
    const value = await retryTransient(read);
    const after = await seqOf();
    if (after === seq || tries === SNAPSHOT_TRIES) return { seq, value };
    seq = after;
  }
}
