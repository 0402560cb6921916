import { sql } from 'kysely';
/**
 * The initial schema. One statement per `execute`: PGlite runs parameterised
 * (extended-protocol) queries, which take a single statement each.
 *
 * Idempotency lives in constraints, not in application code:
 * - `slots` primary key and `slots.attach_id` unique: a slot is filled once;
 * - `attachments (job_id, stage_index, slot_index)` unique: one attach record per slot;
 * - partial unique indexes on `credit_ledger`: one reserve and one release per job,
 *   one capture per attach record;
 * - `check (balance >= 0)` / `check (reserved >= 0)`: money never goes negative,
 *   even if a bug skipped a check.
 */
const STATEMENTS = [
    sql `create table credit_accounts (
    user_id text primary key,
    balance integer not null default 0 check (balance >= 0),
    reserved integer not null default 0 check (reserved >= 0),
    updated_at timestamptz not null default now()
  )`,
    sql `create table attachments (
    id text primary key,
    user_id text not null,
    storage_key text not null,
    content_type text not null,
    byte_size integer not null check (byte_size >= 0),
    width integer,
    height integer,
    job_id text,
    stage_index integer,
    slot_index integer,
    attempt integer,
    seq bigint generated always as identity,
    created_at timestamptz not null default now(),
    constraint attachments_slot_all_or_none check (
      (job_id is null and stage_index is null and slot_index is null and attempt is null) or
      (job_id is not null and stage_index is not null and slot_index is not null and attempt is not null)
    )
  )`,
    sql `create unique index attachments_one_per_slot on attachments (job_id, stage_index, slot_index) where job_id is not null`,
    sql `create index attachments_by_user on attachments (user_id)`,
    sql `create table jobs (
    id text primary key,
    user_id text not null,
    production_id text,
    spec jsonb not null,
    price_per_image integer not null check (price_per_image >= 0),
    status text not null default 'queued'
      check (status in ('queued', 'running', 'completed', 'partial', 'failed', 'cancelled')),
    total integer not null check (total > 0),
    delivered integer not null default 0 check (delivered >= 0 and delivered <= total),
    progress_count integer not null default 0,
    progress_attach_ids jsonb not null default '[]'::jsonb,
    progress_updated_at timestamptz,
    result_attach_ids jsonb,
    error text,
    cancel_requested boolean not null default false,
    credits_reserved integer not null check (credits_reserved >= 0),
    credits_captured integer not null default 0 check (credits_captured >= 0),
    credits_released integer not null default 0 check (credits_released >= 0),
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    started_at timestamptz,
    finished_at timestamptz,
    constraint jobs_credits_balance check (credits_captured + credits_released <= credits_reserved)
  )`,
    sql `create index jobs_by_user on jobs (user_id)`,
    sql `create table stages (
    job_id text not null references jobs (id),
    stage_index integer not null check (stage_index >= 0),
    prompt text not null,
    aspect_ratio text not null,
    quantity integer not null check (quantity > 0),
    input_attach_id text references attachments (id),
    delivered integer not null default 0 check (delivered >= 0 and delivered <= quantity),
    status text not null default 'pending' check (status in ('pending', 'running', 'completed', 'short')),
    shortfall_count integer,
    shortfall_reason text,
    shortfall_error_class text,
    primary key (job_id, stage_index)
  )`,
    sql `alter table attachments add constraint attachments_stage_fk
    foreign key (job_id, stage_index) references stages (job_id, stage_index)`,
    sql `create table slots (
    job_id text not null,
    stage_index integer not null,
    slot_index integer not null check (slot_index >= 0),
    attach_id text unique references attachments (id),
    attempts_used integer not null default 0 check (attempts_used >= 0),
    filled_at timestamptz,
    primary key (job_id, stage_index, slot_index),
    foreign key (job_id, stage_index) references stages (job_id, stage_index)
  )`,
    sql `create table attempts (
    job_id text not null,
    stage_index integer not null,
    slot_index integer not null,
    attempt integer not null check (attempt >= 1),
    outcome text not null default 'started' check (outcome in ('started', 'delivered', 'failed')),
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    error_class text,
    http_status integer,
    message text,
    latency_ms integer,
    prompt_tokens integer,
    output_tokens integer,
    total_tokens integer,
    primary key (job_id, stage_index, slot_index, attempt),
    foreign key (job_id, stage_index) references stages (job_id, stage_index)
  )`,
    sql `create table credit_ledger (
    id bigint generated always as identity primary key,
    user_id text not null references credit_accounts (user_id),
    kind text not null check (kind in ('grant', 'reserve', 'capture', 'release')),
    amount integer not null check (amount >= 0),
    job_id text references jobs (id),
    attach_id text references attachments (id),
    created_at timestamptz not null default now(),
    constraint credit_ledger_refs check (
      (kind = 'grant' and job_id is null and attach_id is null) or
      (kind in ('reserve', 'release') and job_id is not null and attach_id is null) or
      (kind = 'capture' and job_id is not null and attach_id is not null)
    )
  )`,
    sql `create unique index credit_ledger_one_reserve_per_job on credit_ledger (job_id) where kind = 'reserve'`,
    sql `create unique index credit_ledger_one_release_per_job on credit_ledger (job_id) where kind = 'release'`,
    sql `create unique index credit_ledger_one_capture_per_attachment on credit_ledger (attach_id) where kind = 'capture'`,
    sql `create index credit_ledger_by_user on credit_ledger (user_id)`,
];
export const initial = {
    async up(db) {
        for (const statement of STATEMENTS)
            await statement.execute(db);
    },
};
