import { sql, type Transaction } from 'kysely';
import type { DatabaseSchema } from '../schema.js';

/**
 * Ends the job's attempts still marked `started`: their process died or shut down
 * before it recorded how they ended. One whose delivery committed (its attach record
 * names the slot and attempt) becomes `delivered`; every other one `abandoned`, which
 * is not a provider failure and costs no retry budget.
 *
 * Attempts of a batch round (listed in the `requests` of one of the job's `batches` rows
 * for their stage) stay `started`, unless their delivery committed (then `delivered`, as
 * any other): their batch keeps running at the provider after the process died, and the
 * run that takes the job over polls it (`openBatches`) and ends them from its answers.
 * Ending them here would send their slots again in a second batch.
 *
 * Only the job's lease holder may call it (inside `beginRun` or `reopenJob`, under the
 * job row lock): then no live process has an attempt of this job in flight.
 *
 * @returns how many attempts became `abandoned`.
 */
export async function abandonStartedAttempts(trx: Transaction<DatabaseSchema>, jobId: string): Promise<number> {
  const result = await sql<{ abandoned: number }>`
    with ended as (
      update attempts a set
        outcome = case when exists (
          select 1 from attachments t
          where t.job_id = a.job_id and t.stage_index = a.stage_index and t.slot_index = a.slot_index and t.attempt = a.attempt
        ) then 'delivered' else 'abandoned' end,
        finished_at = coalesce(a.finished_at, now())
      where a.job_id = ${jobId} and a.outcome = 'started'
        and (
          exists (
            select 1 from attachments t
            where t.job_id = a.job_id and t.stage_index = a.stage_index and t.slot_index = a.slot_index and t.attempt = a.attempt
          )
          or not exists (
            select 1 from batches b
            where b.job_id = a.job_id and b.stage_index = a.stage_index
              and b.requests @> jsonb_build_array(jsonb_build_object('slot', a.slot_index, 'attempt', a.attempt))
          )
        )
      returning a.outcome
    )
    select count(*) filter (where outcome = 'abandoned')::int as abandoned from ended`.execute(trx);
  return result.rows[0]?.abandoned ?? 0;
}
