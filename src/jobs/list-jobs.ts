import { JOB_STATUSES, listUserJobs, retryTransient, type Database, type JobRowStatus, type UserJobRow, type UserJobsPosition } from '../db/index.js';
import { actingUser, InvalidInputError, type Caller } from './caller.js';

/** How many jobs a page holds when the caller does not say, and at most. */
export const JOB_PAGE = Object.freeze({ defaultLimit: 20, maxLimit: 100 });

export interface ListJobsQuery {
  readonly status?: string | undefined;
  /** Decimal digits, 1..{@link JOB_PAGE}.maxLimit. Default {@link JOB_PAGE}.defaultLimit. */
  readonly limit?: string | undefined;
  /** The `nextCursor` of the page before (opaque). */
  readonly cursor?: string | undefined;
  /** Whose jobs: an admin's choice only. Default the caller's user. */
  readonly userId?: string | undefined;
}

/** A page of jobs, newest first; `nextCursor` is null on the last page. */
export interface JobPage {
  readonly jobs: readonly UserJobRow[];
  readonly nextCursor: string | null;
}

/**
 * A page of the caller's jobs (an admin may name a user), newest first, optionally of
 * one status. The cursor is opaque to clients (base64url of the last job's exact
 * creation time and id): a job submitted between two pages does not shift the next one.
 *
 * @throws {InvalidInputError} a bad `status`, `limit` or `cursor` (field + rule).
 */
export async function listJobs(database: Database, caller: Caller, query: ListJobsQuery): Promise<JobPage> {
  const userId = actingUser(caller, query.userId);
  const problems: { field: string; rule: string }[] = [];
  const status = query.status;
  if (status !== undefined && !(JOB_STATUSES as readonly string[]).includes(status)) problems.push({ field: 'status', rule: `must be one of ${JOB_STATUSES.join(', ')}, got ${JSON.stringify(status)}` });
  let limit: number = JOB_PAGE.defaultLimit;
  if (query.limit !== undefined) {
    limit = /^[0-9]{1,4}$/.test(query.limit) ? Number(query.limit) : 0;
    if (limit < 1 || limit > JOB_PAGE.maxLimit) problems.push({ field: 'limit', rule: `must be an integer in 1..${JOB_PAGE.maxLimit}, got ${JSON.stringify(query.limit)}` });
  }
  const after = query.cursor === undefined ? undefined : decodeCursor(query.cursor);
  if (after === null) problems.push({ field: 'cursor', rule: 'is not a cursor this service gave out (use nextCursor of the page before)' });
  if (problems.length > 0) throw new InvalidInputError(problems);
  const page = await retryTransient(() => listUserJobs(database, userId, { status: status as JobRowStatus | undefined, limit, after: after ?? undefined }));
  return { jobs: page.jobs, nextCursor: page.next === null ? null : encodeCursor(page.next) };
}

function encodeCursor(position: UserJobsPosition): string {
  return Buffer.from(JSON.stringify([position.createdAt, position.jobId]), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): UserJobsPosition | null {
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (!Array.isArray(value) || value.length !== 2) return null;
    const [createdAt, jobId] = value as unknown[];
    if (typeof createdAt !== 'string' || typeof jobId !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$/.test(createdAt)) return null;
    return { createdAt, jobId };
  } catch {
    return null;
  }
}
