import { sql } from 'kysely';
/**
 * Appends attach ids to the job's seed-compatible progress (`progress_attach_ids`,
 * `progress_count`), in the order given, skipping ids already there. Only the
 * new ids travel; the list is never rewritten from the client. One statement:
 * the row lock of the update is all it needs, and skipping present ids makes a
 * replayed batch harmless.
 */
export async function appendProgress(database, jobId, attachIds) {
    if (attachIds.length === 0)
        return;
    await sql `
    with fresh as (
      select coalesce(jsonb_agg(x.id order by x.n), '[]'::jsonb) as ids
      from jsonb_array_elements_text(cast(cast(${JSON.stringify(attachIds)} as text) as jsonb)) with ordinality as x(id, n)
      where not exists (select 1 from jobs j where j.id = ${jobId} and j.progress_attach_ids ? x.id)
    )
    update jobs set
      progress_attach_ids = jobs.progress_attach_ids || fresh.ids,
      progress_count = jsonb_array_length(jobs.progress_attach_ids) + jsonb_array_length(fresh.ids),
      progress_updated_at = now()
    from fresh
    where jobs.id = ${jobId}`.execute(database.db);
}
/** The job's progress as written by {@link appendProgress}, or null for an unknown job. */
export async function getProgress(database, jobId) {
    const row = await database.db
        .selectFrom('jobs')
        .select(['progress_count', 'progress_attach_ids'])
        .where('id', '=', jobId)
        .executeTakeFirst();
    return row ? { count: row.progress_count, attachIds: row.progress_attach_ids } : null;
}
