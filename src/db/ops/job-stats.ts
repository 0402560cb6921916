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
  /** Estimated cost of every answer (`attempts.cost_usd`, failed answers included), USD. */
  readonly costUsd: number;
  /** The part of `costUsd` whose answer did not become a delivered image, USD. */
  readonly wastedUsd: number;
  /** Timed-out calls the provider may still bill: how many, and their estimate at one image's price, USD. Not in `costUsd`. */
  readonly possiblyBilled: { readonly count: number; readonly usd: number };
  /** `costUsd` by how the attempt ended: `delivered`, else the error class. */
  readonly costByClass: Readonly<Record<string, number>>;
  /** `costUsd` by the model the answers were priced as. */
  readonly costByModel: Readonly<Record<string, number>>;
  /**
   * Batch mode: provider batches sent (one per round of a batch stage), the attempts they
   * carried, how many of those delivered, and their part of `costUsd` (at batch prices).
   */
  readonly batch: { readonly batches: number; readonly attempts: number; readonly delivered: number; readonly costUsd: number };
}

/**
 * Attempt statistics, in ONE query (aggregate filters plus scalar subqueries for
 * the per-class counts and the cost by class and by model), so the figures are one consistent snapshot. No locks.
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
    cost_usd: number;
    wasted_usd: number;
    possibly_billed_count: number;
    possibly_billed_usd: number;
    cost_by_class: Record<string, number>;
    cost_by_model: Record<string, number>;
    batch: { batches: number; attempts: number; delivered: number; cost_usd: number };
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
               group by error_class) c) as by_class,
      coalesce(sum(cost_usd), 0)::float8 as cost_usd,
      coalesce(sum(cost_usd) filter (where outcome <> 'delivered'), 0)::float8 as wasted_usd,
      count(*) filter (where possibly_billed_usd > 0)::int as possibly_billed_count,
      coalesce(sum(possibly_billed_usd), 0)::float8 as possibly_billed_usd,
      (select coalesce(jsonb_object_agg(c.k, c.usd), '{}'::jsonb)
         from (select case when outcome = 'delivered' then 'delivered' else coalesce(error_class, outcome) end as k, sum(cost_usd)::float8 as usd
               from attempts where cost_usd is not null and ${scope}
               group by 1) c) as cost_by_class,
      (select coalesce(jsonb_object_agg(c.model, c.usd), '{}'::jsonb)
         from (select model, sum(cost_usd)::float8 as usd from attempts
               where cost_usd is not null and model is not null and ${scope}
               group by model) c) as cost_by_model,
      (select jsonb_build_object(
           'batches', (select count(*) from batches where ${scope}),
           'attempts', count(*), 'delivered', count(*) filter (where a.outcome = 'delivered'),
           'cost_usd', coalesce(sum(a.cost_usd), 0))
         from attempts a
         where ${scope} and exists (
           select 1 from batches b where b.job_id = a.job_id and b.stage_index = a.stage_index
             and b.requests @> jsonb_build_array(jsonb_build_object('slot', a.slot_index, 'attempt', a.attempt)))) as batch
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
    costUsd: row.cost_usd,
    wastedUsd: row.wasted_usd,
    possiblyBilled: { count: row.possibly_billed_count, usd: row.possibly_billed_usd },
    costByClass: row.cost_by_class,
    costByModel: row.cost_by_model,
    batch: { batches: Number(row.batch.batches), attempts: Number(row.batch.attempts), delivered: Number(row.batch.delivered), costUsd: Number(row.batch.cost_usd) },
  };
}
