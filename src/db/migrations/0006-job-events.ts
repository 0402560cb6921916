import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * A durable, per-job ordered event log, so a client of another process (an SSE stream)
 * can resume from the last event it saw with no gap and no duplicate.
 *
 * - `job_events`: one row per event, numbered `seq` = 1, 2, 3, ... per job, written in the
 *   transaction that commits the fact it reports; `payload` is the event as notified
 *   (`NotifiedEvent`, `src/db/notifications.ts`), `type` repeats its type for queries.
 * - `jobs.event_seq`: the job's last `seq`. The next number is taken by updating it,
 *   which holds the job row lock until commit, so numbers commit in order and without
 *   holes (see `internal/append-job-events.ts` for why not a sequence).
 *
 * A job that existed before this migration starts its log at 1 with its next event;
 * what it did before is in its other tables, not in the log.
 */
export const jobEvents: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`alter table jobs add column event_seq integer not null default 0 check (event_seq >= 0)`.execute(db);
    await sql`create table job_events (
      job_id text not null references jobs (id) on delete cascade,
      seq integer not null check (seq >= 1),
      type text not null,
      payload jsonb not null,
      created_at timestamptz not null default now(),
      primary key (job_id, seq),
      constraint job_events_type_matches_payload check (type = payload ->> 'type')
    )`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop table job_events`.execute(db);
    await sql`alter table jobs drop column event_seq`.execute(db);
  },
};
