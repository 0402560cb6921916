import { sql } from 'kysely';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';
import { fixedStatement } from '../internal/fixed-statement.js';
import { assertSlotExists } from '../internal/stage-slot.js';

export interface StartAttemptOptions {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly slotIndex: number;
  /** 1-based, counting across restarts. */
  readonly attempt: number;
}

/**
 * Records that an attempt is about to call the provider. Call it (and await it)
 * BEFORE the call: after a crash, `attempts_used` then counts the attempt even
 * if it never finished, so a restart cannot spend the same budget twice.
 *
 * Idempotent: the attempt row is `on conflict do nothing`, and
 * `attempts_used = greatest(old, attempt)` never goes backwards. The slot row
 * lock taken by the upsert is the only lock: attempts touch no money and no
 * job-wide counter.
 */
export async function startAttempt(database: Database, options: StartAttemptOptions): Promise<void> {
  const { jobId, stageIndex, slotIndex, attempt } = options;
  assertCount('attempt', attempt, 1);
  // One statement (it runs before every provider call, so it is on the hot path): the
  // slot upsert, the attempt row and the stage status in data-modifying CTEs, all
  // gated on the slot being one the stage owes. A single statement is atomic.
  const row = await sql<{ found: number }>`
    with target as (
      select job_id, stage_index from stages
      where job_id = ${jobId} and stage_index = ${stageIndex} and ${slotIndex}::int >= 0 and ${slotIndex}::int < quantity
    ), slot as (
      insert into slots (job_id, stage_index, slot_index, attempts_used)
      select job_id, stage_index, ${slotIndex}::int, ${attempt}::int from target
      on conflict (job_id, stage_index, slot_index) do update set attempts_used = greatest(slots.attempts_used, excluded.attempts_used)
      returning 1
    ), started as (
      insert into attempts (job_id, stage_index, slot_index, attempt, outcome)
      select job_id, stage_index, ${slotIndex}::int, ${attempt}::int, 'started' from target
      on conflict (job_id, stage_index, slot_index, attempt) do nothing
      returning 1
    ), stage as (
      update stages set status = 'running'
      where job_id = ${jobId} and stage_index = ${stageIndex} and status = 'pending' and exists (select 1 from target)
      returning 1
    )
    select (select count(*) from target)::int as found`.execute(database.db);
  if ((row.rows[0]?.found ?? 0) > 0) return;
  // Not a slot the job owes: say precisely why (unknown job, stage or slot).
  await database.db.transaction().execute((trx) => assertSlotExists(trx, jobId, stageIndex, slotIndex));
  throw new Error(`startAttempt: slot ${jobId}/${stageIndex}/${slotIndex} was not recorded`);
}

/**
 * {@link startAttempts}' statement, compiled once (it runs about once per delivered image): the
 * same writes as startAttempt's, over a set of rows ($1: their JSON); `target` keeps the
 * attempts the job owes.
 */
const START_ATTEMPTS = fixedStatement<{ i: number }>(`
    with input as (
      select * from jsonb_to_recordset(cast(cast($1 as text) as jsonb)) as i(i int, job_id text, stage_index int, slot_index int, attempt int)
    ), target as (
      select input.* from input join stages on stages.job_id = input.job_id and stages.stage_index = input.stage_index
      where input.slot_index >= 0 and input.slot_index < stages.quantity
    ), slot as (
      insert into slots (job_id, stage_index, slot_index, attempts_used)
      select job_id, stage_index, slot_index, attempt from target order by job_id, stage_index, slot_index
      on conflict (job_id, stage_index, slot_index) do update set attempts_used = greatest(slots.attempts_used, excluded.attempts_used)
      returning 1
    ), started as (
      insert into attempts (job_id, stage_index, slot_index, attempt, outcome)
      select job_id, stage_index, slot_index, attempt, 'started' from target order by job_id, stage_index, slot_index
      on conflict (job_id, stage_index, slot_index, attempt) do nothing
      returning 1
    ), stage as (
      update stages set status = 'running'
      from (select distinct job_id, stage_index from target) as owed
      where stages.job_id = owed.job_id and stages.stage_index = owed.stage_index and stages.status = 'pending'
      returning 1
    )
    select i from target`);

/**
 * {@link startAttempt} for several attempts in ONE statement (the attempt starts that piled up
 * while the previous one was written: `AttemptStarter`), each recorded exactly as
 * {@link startAttempt} records it. Returns the indexes (into `starts`) of the attempts whose
 * slot the job does not owe: nothing is written for them (the caller asks {@link startAttempt}
 * for the precise error). At most one attempt per slot: a slot given twice is a TypeError.
 *
 * Locking: the slot rows, taken in key order (job, stage, slot); no job row, as one start.
 */
export async function startAttempts(database: Database, starts: readonly StartAttemptOptions[]): Promise<ReadonlySet<number>> {
  const slots = new Set<string>();
  for (const { jobId, stageIndex, slotIndex, attempt } of starts) {
    assertCount('attempt', attempt, 1);
    const slot = JSON.stringify([jobId, stageIndex, slotIndex]);
    if (slots.has(slot)) throw new TypeError(`startAttempts: slot ${jobId}/${stageIndex}/${slotIndex} is given twice`);
    slots.add(slot);
  }
  const input = JSON.stringify(starts.map((s, i) => ({ i, job_id: s.jobId, stage_index: s.stageIndex, slot_index: s.slotIndex, attempt: s.attempt })));
  const found = await START_ATTEMPTS(database.db, [input]);
  const missing = new Set(starts.keys());
  for (const row of found.rows) missing.delete(row.i);
  return missing;
}
