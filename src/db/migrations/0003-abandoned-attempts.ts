import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * Crashes cost no budget.
 *
 * - `attempts.outcome` gains `abandoned`: an attempt whose process died (or shut
 *   down) before it ended. It is not a provider failure and is not charged to the
 *   slot or stage retry budget on resume.
 * - `jobs.crash_resumes`: how many runs in a row died without delivering anything;
 *   `jobs.delivered_at_run_start`: the job's `delivered` when its last run started
 *   (to tell whether that run delivered). Together they stop a crash loop.
 * - `jobs.reopened` and `credit_ledger.round`: a job that ended `partial` only because
 *   abandoned attempts were charged (before this migration) is reopened once its
 *   budget is recomputed; it reserves again, so "one reserve / one release per job"
 *   becomes one per job and round.
 */
export const abandonedAttempts: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`alter table attempts drop constraint attempts_outcome_check`.execute(db);
    await sql`alter table attempts add constraint attempts_outcome_check
      check (outcome in ('started', 'delivered', 'failed', 'abandoned'))`.execute(db);
    await sql`alter table jobs add column crash_resumes integer not null default 0 check (crash_resumes >= 0)`.execute(db);
    await sql`alter table jobs add column delivered_at_run_start integer`.execute(db);
    await sql`alter table jobs add column reopened integer not null default 0 check (reopened >= 0)`.execute(db);
    await sql`alter table credit_ledger add column round integer not null default 0 check (round >= 0)`.execute(db);
    await sql`drop index credit_ledger_one_reserve_per_job`.execute(db);
    await sql`drop index credit_ledger_one_release_per_job`.execute(db);
    await sql`create unique index credit_ledger_one_reserve_per_job_round on credit_ledger (job_id, round) where kind = 'reserve'`.execute(db);
    await sql`create unique index credit_ledger_one_release_per_job_round on credit_ledger (job_id, round) where kind = 'release'`.execute(db);
  },
};
