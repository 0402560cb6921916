import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * `fail_attempt(...)`: a failed attempt's record with its `attempt:failed` event
 * (`finishAttempt` with an event, `src/db/ops/finish-attempt.ts`) in ONE round trip. The
 * operation sent seven statements one by one (`begin`, the job row `for update`, the attempt
 * row `for update`, the upsert, the job's event number, the event's row and its NOTIFY,
 * `commit`); on PostgreSQL seven round trips, on PGlite six messages to its thread, each
 * statement built and compiled in the main thread, for every failed call (BENCHMARKS.md 11G).
 * The function runs the same statements in the server, in the same order and under the same
 * locks (the job row, then the attempt's), and decides nothing the operation did not:
 *
 * - `logged`: the row upserted and the event appended (numbered from the job row, announced
 *   on the channel with `prefix || seq || '}'`, as `deliver_slot` does).
 * - `recorded`: the row upserted, no event: the job has ended (its log ends with
 *   `job:finished`), or the row already said `failed` (a repeated record), or there is no
 *   job (then the upsert's foreign key fails the call, as it did).
 *
 * `p_row` is the `attempts` row as JSON (`jsonb_populate_record`, the columns named below;
 * `finished_at` is the server's `now()`).
 */
export const failAttemptFunction: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`
      create function fail_attempt(
        p_row jsonb, p_event jsonb, p_final_statuses jsonb, p_notify_channel text, p_notify_prefix text)
      returns text
      language plpgsql
      as $fn$
      declare
        r attempts;
        j record;
        job_found boolean;
        before text;
        seq integer;
      begin
        r := jsonb_populate_record(null::attempts, p_row);
        select jobs.status into j from jobs where jobs.id = r.job_id for update;
        job_found := found;
        select attempts.outcome into before from attempts
        where attempts.job_id = r.job_id and attempts.stage_index = r.stage_index and attempts.slot_index = r.slot_index and attempts.attempt = r.attempt
        for update;
        insert into attempts (job_id, stage_index, slot_index, attempt, outcome, finished_at, error_class, http_status, message, latency_ms,
          prompt_tokens, output_tokens, total_tokens, thoughts_tokens, image_count, model, cost_usd, possibly_billed_usd)
        values (r.job_id, r.stage_index, r.slot_index, r.attempt, r.outcome, now(), r.error_class, r.http_status, r.message, r.latency_ms,
          r.prompt_tokens, r.output_tokens, r.total_tokens, r.thoughts_tokens, r.image_count, r.model, r.cost_usd, r.possibly_billed_usd)
        on conflict (job_id, stage_index, slot_index, attempt) do update set
          outcome = excluded.outcome, finished_at = excluded.finished_at, error_class = excluded.error_class,
          http_status = excluded.http_status, message = excluded.message, latency_ms = excluded.latency_ms,
          prompt_tokens = excluded.prompt_tokens, output_tokens = excluded.output_tokens, total_tokens = excluded.total_tokens,
          thoughts_tokens = excluded.thoughts_tokens, image_count = excluded.image_count, model = excluded.model,
          cost_usd = excluded.cost_usd, possibly_billed_usd = excluded.possibly_billed_usd;
        if not job_found or p_final_statuses ? j.status or before is not distinct from 'failed' then
          return 'recorded';
        end if;
        update jobs set event_seq = jobs.event_seq + 1 where jobs.id = r.job_id returning jobs.event_seq into seq;
        insert into job_events (job_id, seq, type, payload) values (r.job_id, seq, p_event ->> 'type', p_event);
        perform pg_notify(p_notify_channel, p_notify_prefix || cast(seq as text) || '}');
        return 'logged';
      end
      $fn$`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop function fail_attempt(jsonb, jsonb, jsonb, text, text)`.execute(db);
  },
};
