import { sql } from 'kysely';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';
import type { JobRowStatus } from '../schema.js';

/** One line of a user's job list. */
export interface UserJobRow {
  readonly jobId: string;
  readonly status: JobRowStatus;
  readonly productionId: string | null;
  readonly priority: number;
  readonly totalImages: number;
  readonly deliveredImages: number;
  readonly createdAt: Date;
  readonly finishedAt: Date | null;
}

/** Where a page of {@link listUserJobs} starts: after this job (the last one of the page before). */
export interface UserJobsPosition {
  /** The job's `created_at` as exact text (microseconds, UTC): a JS `Date` would cut it to milliseconds. */
  readonly createdAt: string;
  readonly jobId: string;
}

export interface ListUserJobsOptions {
  /** Only jobs in this status. Default: every status. */
  readonly status?: JobRowStatus | undefined;
  /** At most this many jobs (1..1000). */
  readonly limit: number;
  /** Only jobs after this one in the order (newest first). Default: from the newest. */
  readonly after?: UserJobsPosition | undefined;
}

/**
 * A page of `userId`'s jobs, newest first (`created_at` desc, then `id` desc as the tie
 * break), and, when more jobs follow, the position to start the next page from (its last
 * job; one row more than `limit` is read to know). Keyset
 * pagination, not `offset`: a job submitted between two pages shifts nothing, and a page
 * costs the same however deep it is (`jobs_by_user` narrows to the user).
 *
 * One plain read, no lock.
 */
export async function listUserJobs(database: Database, userId: string, options: ListUserJobsOptions): Promise<{ jobs: UserJobRow[]; next: UserJobsPosition | null }> {
  assertCount('limit', options.limit, 1);
  let query = database.db
    .selectFrom('jobs')
    .select([
      'id',
      'status',
      'production_id',
      'priority',
      'total',
      'delivered',
      'created_at',
      'finished_at',
      sql<string>`to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`.as('created_text'),
    ])
    .where('user_id', '=', userId);
  if (options.status !== undefined) query = query.where('status', '=', options.status);
  const after = options.after;
  if (after !== undefined) query = query.where(sql<boolean>`(created_at, id) < (${after.createdAt}::timestamptz, ${after.jobId})`);
  const rows = await query.orderBy('created_at', 'desc').orderBy('id', 'desc').limit(options.limit + 1).execute();
  const page = rows.slice(0, options.limit);
  const tail = rows.length > options.limit ? page.at(-1) : undefined;
  return {
    jobs: page.map((row) => ({
      jobId: row.id,
      status: row.status,
      productionId: row.production_id,
      priority: row.priority,
      totalImages: row.total,
      deliveredImages: row.delivered,
      createdAt: row.created_at,
      finishedAt: row.finished_at,
    })),
    next: tail === undefined ? null : { createdAt: tail.created_text, jobId: tail.id },
  };
}
