import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * The fleet (many `worker` processes on one PostgreSQL):
 *
 * - `jobs.priority`: higher runs first (the queue, the takeover sweep, attempt permits).
 * - `jobs_unattended`: the sweep's index; it looks for queued or running jobs whose lease
 *   lapsed (a dead worker's) or that nobody has held for a while.
 * - `workers`: one row per live worker, renewed with its heartbeat (`alive_until`); shows
 *   operators the fleet (`imagegen workers`) and carries each worker's share of the
 *   provider limit (`demand`, `held`). A row whose `alive_until` passed is a dead worker's:
 *   its share counts for nothing.
 * - `provider_limits`: one row per provider key (a hash, never the key): the fleet's
 *   adaptive limit (AIMD) under the optional static ceilings.
 */
export const fleet: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`alter table jobs add column priority integer not null default 0`.execute(db);
    await sql`create index jobs_unattended on jobs (priority desc, created_at) where status in ('queued', 'running')`.execute(db);
    await sql`create table workers (
      id text primary key,
      name text not null,
      pid integer not null,
      started_at timestamptz not null default now(),
      heartbeat_at timestamptz not null default now(),
      alive_until timestamptz not null,
      provider_key text,
      concurrency integer not null check (concurrency >= 1),
      provider_ceiling integer check (provider_ceiling >= 1),
      demand integer not null default 0 check (demand >= 0),
      held integer not null default 0 check (held >= 0),
      in_flight integer not null default 0 check (in_flight >= 0)
    )`.execute(db);
    await sql`create index workers_provider on workers (provider_key, alive_until)`.execute(db);
    await sql`create table provider_limits (
      key text primary key,
      current_limit integer not null check (current_limit >= 1),
      successes integer not null default 0 check (successes >= 0),
      epoch integer not null default 0,
      last_cut_at integer not null default 0,
      cuts integer not null default 0,
      updated_at timestamptz not null default now()
    )`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop table provider_limits`.execute(db);
    await sql`drop table workers`.execute(db);
    await sql`drop index jobs_unattended`.execute(db);
    await sql`alter table jobs drop column priority`.execute(db);
  },
};
