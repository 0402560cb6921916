import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * Signed webhooks (Standard Webhooks), sent at least once from an outbox.
 *
 * - `webhook_secrets`: one signing secret per user (`whsec_<base64>`), made on first use
 *   (the first send, or `imagegen webhooks secret`, `GET /v1/webhooks/secret`).
 * - `webhook_deliveries`: the outbox. One row per logged job event a job's webhook
 *   subscribes to, inserted by `appendJobEvents` in the transaction that logs the event,
 *   so a row exists if and only if its event committed. `id` (`msg_<jobId>_<seq>`) is the
 *   `webhook-id` header: the same on every retry, so receivers can drop duplicates.
 *   `status`: `pending` until a 2xx (`delivered`) or the retry window closes (`failed`).
 *   `next_attempt_at` is when a dispatcher may take it; a claim moves it forward by the
 *   claim lease, so a dispatcher that dies mid-send lets another one retry after it.
 *   `window_from` starts the retry window (the event's commit; a redelivery restarts it).
 *   `retry_attempt` counts the failed attempts of this window (the backoff's exponent).
 * - `webhook_attempts`: every attempt, kept across redeliveries: its HTTP status, or the
 *   kind of network error (`timeout`, `connection_reset`, `connection_refused`, ...).
 */
export const webhooks: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`create table webhook_secrets (
      user_id text primary key,
      secret text not null check (secret like 'whsec_%'),
      created_at timestamptz not null default now()
    )`.execute(db);
    await sql`create table webhook_deliveries (
      id text primary key,
      job_id text not null references jobs (id) on delete cascade,
      seq integer not null check (seq >= 1),
      user_id text not null,
      event_type text not null check (event_type in ('job.finished', 'stage.finished', 'image.delivered')),
      url text not null,
      payload jsonb not null,
      status text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
      attempts integer not null default 0 check (attempts >= 0),
      retry_attempt integer not null default 0 check (retry_attempt >= 0),
      next_attempt_at timestamptz not null default now(),
      claimed_by text,
      window_from timestamptz not null default now(),
      created_at timestamptz not null default now(),
      finished_at timestamptz,
      unique (job_id, seq)
    )`.execute(db);
    await sql`create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending'`.execute(db);
    await sql`create table webhook_attempts (
      delivery_id text not null references webhook_deliveries (id) on delete cascade,
      attempt integer not null check (attempt >= 1),
      at timestamptz not null,
      duration_ms integer not null check (duration_ms >= 0),
      status_code integer,
      error text,
      primary key (delivery_id, attempt),
      constraint webhook_attempts_outcome check ((status_code is null) <> (error is null))
    )`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop table webhook_attempts`.execute(db);
    await sql`drop table webhook_deliveries`.execute(db);
    await sql`drop table webhook_secrets`.execute(db);
  },
};
