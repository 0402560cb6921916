import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * Batch mode (Gemini Batch API): one row per batch a stage sends, one batch per round.
 *
 * The row and its attempts (`started`) are written in one transaction BEFORE the
 * provider's create call (`recordBatchRound`), so a worker that dies between the create
 * and its answer leaves enough behind for the worker that takes the job over to poll the
 * same batch (found again by `display_name` when `name` never arrived) instead of sending
 * a second one for the same slots.
 *
 * - primary key `(job_id, stage_index, round)`: one batch per round, the idempotency key
 *   of `recordBatchRound`;
 * - `display_name` (unique): our key for the batch at the provider, chosen before the create;
 * - `name`: the provider's batch name, null until the create answered;
 * - `state`: `submitting` until the create answered, then what the provider last reported;
 *   `ended_at` is set exactly when the state is terminal;
 * - `requests`: the round's attempts, `[{"slot": int, "attempt": int}, ...]`, never empty.
 *   `abandonStartedAttempts` leaves those attempts `started` (the batch keeps running at
 *   the provider); the run that takes the job over ends them from the batch's answers.
 */
export const batches: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`create table batches (
      job_id text not null references jobs (id) on delete cascade,
      stage_index integer not null,
      round integer not null check (round >= 1),
      display_name text not null unique,
      name text,
      state text not null default 'submitting'
        check (state in ('submitting', 'pending', 'running', 'succeeded', 'failed', 'cancelled', 'expired')),
      error text,
      requests jsonb not null check (case when jsonb_typeof(requests) = 'array' then jsonb_array_length(requests) > 0 else false end),
      created_at timestamptz not null default now(),
      ended_at timestamptz,
      primary key (job_id, stage_index, round),
      foreign key (job_id, stage_index) references stages (job_id, stage_index) on delete cascade,
      constraint batches_ended_when_terminal check (
        (ended_at is not null) = (state in ('succeeded', 'failed', 'cancelled', 'expired'))
      )
    )`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop table batches`.execute(db);
  },
};
