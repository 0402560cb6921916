import { sql } from 'kysely';
import type { Database } from '../database.js';
import { JOB_STATUSES, type JobRowStatus } from '../schema.js';

/** The jobs of one status and the credits their rows hold. */
export interface JobStatusCount {
  readonly status: JobRowStatus;
  readonly jobs: number;
  /** Sum of `credits_captured` (one image's price per delivery) over these jobs. */
  readonly creditsCaptured: number;
  /** Sum of `credits_released` (what `finishJob` gave back) over these jobs. */
  readonly creditsReleased: number;
}

/**
 * Jobs per status, with the credits captured and released by them (the job rows' counters,
 * the figures a job's summary reports), every status present (zero when none). For
 * metrics: ONE grouped read, so the counts and the credits are one consistent snapshot;
 * no locks (a scrape must never wait for, or hold up, a delivery).
 */
export async function countJobsByStatus(database: Database): Promise<JobStatusCount[]> {
  const rows = await database.db
    .selectFrom('jobs')
    .select([
      'status',
      sql<number>`count(*)::int`.as('jobs'),
      // A bigint sum is numeric (a string on both drivers): cast back to bigint, read as a number.
      sql<number>`coalesce(sum(credits_captured), 0)::bigint`.as('credits_captured'),
      sql<number>`coalesce(sum(credits_released), 0)::bigint`.as('credits_released'),
    ])
    .groupBy('status')
    .execute();
  return JOB_STATUSES.map((status) => {
    const row = rows.find((r) => r.status === status);
    return { status, jobs: row?.jobs ?? 0, creditsCaptured: row?.credits_captured ?? 0, creditsReleased: row?.credits_released ?? 0 };
  });
}
