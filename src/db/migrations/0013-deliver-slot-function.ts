import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * `deliver_slot(...)`: a delivery (`src/db/ops/deliver-slot.ts`) in ONE round trip. The
 * statements are the ones the operation sent one by one (`begin`, the job row `for
 * update`, the slot upsert, the writes' statement, `commit`), run by the server in the
 * same order and under the same locks (job -> slot -> account); a call outside a
 * transaction commits on its own. Per delivered image that was four round trips on
 * PostgreSQL and four messages to PGlite's thread, each with its query built and compiled
 * in the main thread.
 *
 * It decides nothing the operation does not: what it finds is returned as `outcome`, and
 * the operation turns it into the same errors as before:
 * - `no_job`, `lease_lost` (with the holder), `no_slot` (with the stage's quantity, null
 *   without the stage): nothing written;
 * - `webhook`: the job has a webhook and the call did not say it writes the outbox
 *   (`p_outbox_in_caller`): nothing written; the operation calls again in a transaction
 *   of its own and writes the outbox rows in it;
 * - `duplicate` (the slot's attach id): nothing written;
 * - `delivered`: every row written, the counts the statement committed;
 * - a final job with an empty slot raises SQLSTATE `IG001` (the slot row the upsert made
 *   goes with the statement), a stage gone mid-delivery `IG002`.
 * The caller passes what only the application knows: the attach id, the event (without
 * its counts), the NOTIFY channel and payload prefix, the final job statuses.
 */
export const deliverSlotFunction: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`
      create function deliver_slot(
        p_job_id text, p_stage_index integer, p_slot_index integer, p_attempt integer,
        p_storage_key text, p_content_type text, p_byte_size integer, p_width integer, p_height integer,
        p_check_lease boolean, p_lease_owner text,
        p_attach_id text, p_event jsonb, p_final_statuses jsonb,
        p_notify_channel text, p_notify_prefix text, p_outbox_in_caller boolean)
      returns table (
        outcome text, found_attach_id text, job_user_id text, job_lease_owner text, stage_quantity integer,
        job_webhook jsonb, logged_seq integer, job_delivered integer, job_total integer, stage_delivered integer)
      language plpgsql
      as $fn$
      declare
        j record;
        existing text;
      begin
        select jobs.user_id, jobs.price_per_image, jobs.status, jobs.lease_owner, jobs.spec -> 'webhook' as webhook,
          (select stages.quantity from stages where stages.job_id = p_job_id and stages.stage_index = p_stage_index) as quantity
        into j
        from jobs where jobs.id = p_job_id
        for update;
        if not found then
          return query select 'no_job'::text, null::text, null::text, null::text, null::integer, null::jsonb, null::integer, null::integer, null::integer, null::integer;
          return;
        end if;
        if p_check_lease and j.lease_owner is distinct from p_lease_owner then
          return query select 'lease_lost'::text, null::text, j.user_id, j.lease_owner, j.quantity, null::jsonb, null::integer, null::integer, null::integer, null::integer;
          return;
        end if;
        if j.quantity is null or p_slot_index < 0 or p_slot_index >= j.quantity then
          return query select 'no_slot'::text, null::text, j.user_id, j.lease_owner, j.quantity, null::jsonb, null::integer, null::integer, null::integer, null::integer;
          return;
        end if;
        if jsonb_typeof(j.webhook) = 'object' and not p_outbox_in_caller then
          return query select 'webhook'::text, null::text, j.user_id, j.lease_owner, j.quantity, j.webhook, null::integer, null::integer, null::integer, null::integer;
          return;
        end if;

        insert into slots (job_id, stage_index, slot_index) values (p_job_id, p_stage_index, p_slot_index)
        on conflict (job_id, stage_index, slot_index) do update set attach_id = slots.attach_id
        returning slots.attach_id into existing;
        if existing is not null then
          return query select 'duplicate'::text, existing, j.user_id, j.lease_owner, j.quantity, j.webhook, null::integer, null::integer, null::integer, null::integer;
          return;
        end if;
        if p_final_statuses ? j.status then
          raise exception using errcode = 'IG001', message = 'job is final: no more deliveries', detail = j.status;
        end if;

        return query
        with attachment as (
          insert into attachments (id, user_id, storage_key, content_type, byte_size, width, height, job_id, stage_index, slot_index, attempt)
          values (p_attach_id, j.user_id, p_storage_key, p_content_type, p_byte_size, p_width, p_height, p_job_id, p_stage_index, p_slot_index, p_attempt)
        ), slot as (
          update slots set attach_id = p_attach_id, filled_at = now(), attempts_used = greatest(slots.attempts_used, p_attempt)
          where slots.job_id = p_job_id and slots.stage_index = p_stage_index and slots.slot_index = p_slot_index
        ), capture as (
          insert into credit_ledger (user_id, kind, amount, job_id, attach_id) values (j.user_id, 'capture', j.price_per_image, p_job_id, p_attach_id)
        ), account as (
          update credit_accounts set reserved = credit_accounts.reserved - j.price_per_image, updated_at = now() where credit_accounts.user_id = j.user_id
        ), job as (
          update jobs set delivered = jobs.delivered + 1, credits_captured = jobs.credits_captured + j.price_per_image, updated_at = now(), event_seq = jobs.event_seq + 1
          where jobs.id = p_job_id
          returning jobs.event_seq, jobs.delivered, jobs.total
        ), stage as (
          update stages set delivered = stages.delivered + 1 where stages.job_id = p_job_id and stages.stage_index = p_stage_index
          returning stages.delivered, stages.quantity
        ), logged as (
          insert into job_events (job_id, seq, type, payload)
          select p_job_id, job.event_seq, p_event ->> 'type', p_event || jsonb_build_object(
            'stageProgress', jsonb_build_object('delivered', stage.delivered, 'total', stage.quantity),
            'progress', jsonb_build_object('delivered', job.delivered, 'total', job.total))
          from job, stage
        ), notified as (
          select pg_notify(p_notify_channel, p_notify_prefix || cast(job.event_seq as text) || '}') from job
        )
        select 'delivered'::text, p_attach_id, j.user_id, j.lease_owner, stage.quantity, j.webhook, job.event_seq, job.delivered, job.total, stage.delivered
        from job, stage, notified;
        if not found then
          raise exception using errcode = 'IG002', message = 'stage vanished during a delivery';
        end if;
      end
      $fn$`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop function deliver_slot(text, integer, integer, integer, text, text, integer, integer, integer, boolean, text, text, jsonb, jsonb, text, text, boolean)`.execute(db);
  },
};
