import { sql } from 'kysely';
import type { Database } from '../database.js';

export interface JobStatsOptions {
  /** One job; omitted = every job. */
  readonly jobId?: string | undefined;
}

export interface JobStats {
  /** Attempts recorded (started, delivered, failed or abandoned). */
  readonly attempts: number;
  readonly failed: number;
  readonly delivered: number;
  /** Attempts cut off by a process that died or shut down: not provider failures, no budget charged. */
  readonly abandoned: number;
  /** Failed attempts per error class. */
  readonly byClass: Readonly<Record<string, number>>;
  /** Attempts with number > 1 (replacements). */
  readonly retries: number;
  /** Replacements that delivered. */
  readonly retriesDelivered: number;
  /** `retriesDelivered / retries`, or null when there were no retries. */
  readonly retrySuccessRate: number | null;
}

/**
 * Attempt statistics, in ONE query (aggregate filters plus a scalar subquery for
 * the per-class counts), so the figures are one consistent snapshot. No locks.
 */
export async function jobStats(database: Database, options: JobStatsOptions = {}): Promise<JobStats> {
  const jobId = options.jobId ?? null;
  const scope = sql`(cast(${jobId} as text) is null or job_id = cast(${jobId} as text))`;
  const result = await sql<{
    attempts: number;
    failed: number;
    delivered: number;
    abandoned: number;
    retries: number;
    retries_delivered: number;
    retry_success_rate: number | null;
    by_class: Record<string, number>;
  }>`
    select
      count(*)::int as attempts,
      count(*) filter (where outcome = 'failed')::int as failed,
      count(*) filter (where outcome = 'delivered')::int as delivered,
      count(*) filter (where outcome = 'abandoned')::int as abandoned,
      count(*) filter (where attempt > 1)::int as retries,
      count(*) filter (where attempt > 1 and outcome = 'delivered')::int as retries_delivered,
      (count(*) filter (where attempt > 1 and outcome = 'delivered'))::float8
        / nullif(count(*) filter (where attempt > 1), 0) as retry_success_rate,
      (select coalesce(jsonb_object_agg(c.error_class, c.n), '{}'::jsonb)
         from (select error_class, count(*)::int as n from attempts
               where outcome = 'failed' and error_class is not null and ${scope}
               group by error_class) c) as by_class
    from attempts
    where ${scope}`.execute(database.db);
  const row = result.rows[0];
  if (!row) throw new Error('aggregate query returned no row');
  return {
    attempts: row.attempts,
    failed: row.failed,
    delivered: row.delivered,
    abandoned: row.abandoned,
    byClass: row.by_class,
    retries: row.retries,
    retriesDelivered: row.retries_delivered,
    retrySuccessRate: row.retry_success_rate,
  };
}
