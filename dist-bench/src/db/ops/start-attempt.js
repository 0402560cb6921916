import { sql } from 'kysely';
import { assertCount } from './assert.js';
import { assertSlotExists } from './stage-slot.js';
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
export async function startAttempt(database, options) {
    const { jobId, stageIndex, slotIndex, attempt } = options;
    assertCount('attempt', attempt, 1);
    await database.db.transaction().execute(async (trx) => {
        await assertSlotExists(trx, jobId, stageIndex, slotIndex);
        await trx
            .insertInto('slots')
            .values({ job_id: jobId, stage_index: stageIndex, slot_index: slotIndex, attempts_used: attempt })
            .onConflict((oc) => oc.columns(['job_id', 'stage_index', 'slot_index']).doUpdateSet({ attempts_used: sql `greatest(slots.attempts_used, excluded.attempts_used)` }))
            .execute();
        await trx
            .insertInto('attempts')
            .values({ job_id: jobId, stage_index: stageIndex, slot_index: slotIndex, attempt, outcome: 'started', error_class: null, http_status: null, message: null, latency_ms: null, prompt_tokens: null, output_tokens: null, total_tokens: null })
            .onConflict((oc) => oc.columns(['job_id', 'stage_index', 'slot_index', 'attempt']).doNothing())
            .execute();
        await trx
            .updateTable('stages')
            .set({ status: 'running' })
            .where('job_id', '=', jobId)
            .where('stage_index', '=', stageIndex)
            .where('status', '=', 'pending')
            .execute();
    });
}
