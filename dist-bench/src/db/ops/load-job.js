/**
 * Reads a job with its per-slot state, or null when it does not exist. Plain
 * reads, no locks: slots change only through `startAttempt`/`deliverSlot`, which
 * are idempotent, so a slightly stale view costs at most a duplicate delivery
 * that writes nothing.
 */
export async function loadJob(database, jobId) {
    const job = await database.db.selectFrom('jobs').selectAll().where('id', '=', jobId).executeTakeFirst();
    if (!job)
        return null;
    const stages = await database.db
        .selectFrom('stages')
        .select(['stage_index', 'quantity'])
        .where('job_id', '=', jobId)
        .orderBy('stage_index')
        .execute();
    const slots = await database.db
        .selectFrom('slots')
        .select(['stage_index', 'slot_index', 'attach_id', 'attempts_used'])
        .where('job_id', '=', jobId)
        .execute();
    const states = stages.map((s) => Array.from({ length: s.quantity }, () => ({ attachId: null, attemptsUsed: 0 })));
    for (const slot of slots) {
        const stage = states[slot.stage_index];
        if (stage && slot.slot_index < stage.length)
            stage[slot.slot_index] = { attachId: slot.attach_id, attemptsUsed: slot.attempts_used };
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
