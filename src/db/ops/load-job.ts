import { sql } from 'kysely';
import type { JobSpec } from '../../domain/job-spec.js';
import type { SlotState, StageState } from '../../domain/resume-state.js';
import type { Database } from '../database.js';
import type { JobRowStatus } from '../schema.js';

/** Everything a (re)started worker needs to continue a job. */
export interface LoadedJob {
  readonly jobId: string;
  readonly userId: string;
  readonly productionId: string | null;
  readonly spec: JobSpec;
  readonly status: JobRowStatus;
  readonly pricePerImage: number;
  readonly total: number;
  readonly delivered: number;
  readonly cancelRequested: boolean;
  /** Per stage, per slot: the attach id that filled it (or null), attempts started and attempts charged. */
  readonly stages: readonly StageState[];
  readonly credits: { readonly reserved: number; readonly captured: number; readonly released: number };
}

/**
 * Reads a job with its per-slot state, or null when it does not exist. Plain
 * reads, no locks: slots change only through `startAttempt`/`deliverSlot`, which
 * are idempotent, so a slightly stale view costs at most a duplicate delivery
 * that writes nothing.
 */
export async function loadJob(database: Database, jobId: string): Promise<LoadedJob | null> {
  const job = await database.db.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst();
  if (!job) return null;
  const stages = await database.db
    .selectFrom('stages')
    .select(['stage_index', 'quantity'])
    .where('job_id', '=', jobId)
    .orderBy('stage_index')
    .execute();
  // Charged attempts: the ones that ended at the provider or in delivery. `started`
  // (in flight, or left by a dead run until `beginRun` abandons it) counts too, so a
  // live run's view never undercounts; `abandoned` and `cancelled` ones do not.
  const slots = await sql<{ stage_index: number; slot_index: number; attach_id: string | null; attempts_used: number; attempts_charged: number }>`
    select s.stage_index, s.slot_index, s.attach_id, s.attempts_used,
      (select count(*) from attempts a
        where a.job_id = s.job_id and a.stage_index = s.stage_index and a.slot_index = s.slot_index
          and a.outcome <> 'abandoned' and a.error_class is distinct from 'cancelled')::int as attempts_charged
    from slots s
    where s.job_id = ${jobId}`.execute(database.db);

  const states: SlotState[][] = stages.map((s) => Array.from({ length: s.quantity }, () => ({ attachId: null, attemptsUsed: 0, attemptsCharged: 0 })));
  for (const slot of slots.rows) {
    const stage = states[slot.stage_index];
    if (stage && slot.slot_index < stage.length) {
      stage[slot.slot_index] = { attachId: slot.attach_id, attemptsUsed: slot.attempts_used, attemptsCharged: slot.attempts_charged };
    }
  }

  return {
    jobId: job.id,
    userId: job.user_id,
    productionId: job.production_id,
    spec: job.spec,
    status: job.status,
    pricePerImage: job.price_per_image,
    total: job.total,
    delivered: job.delivered,
    cancelRequested: job.cancel_requested,
    stages: states,
    credits: { reserved: job.credits_reserved, captured: job.credits_captured, released: job.credits_released },
  };
}
