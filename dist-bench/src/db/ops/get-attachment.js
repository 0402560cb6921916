/** Reads one attach record, or null. No lock. */
export async function getAttachment(database, attachId) {
    const row = await database.db
        .selectFrom('attachments')
        .select(['id', 'user_id', 'storage_key', 'content_type', 'byte_size', 'width', 'height', 'job_id', 'stage_index', 'slot_index', 'attempt', 'created_at'])
        .where('id', '=', attachId)
        .executeTakeFirst();
    if (!row)
        return null;
    return {
        attachId: row.id,
        userId: row.user_id,
        storageKey: row.storage_key,
        contentType: row.content_type,
        byteSize: row.byte_size,
        width: row.width,
        height: row.height,
        slot: row.job_id === null || row.stage_index === null || row.slot_index === null || row.attempt === null
            ? null
            : { jobId: row.job_id, stageIndex: row.stage_index, slotIndex: row.slot_index, attempt: row.attempt },
        createdAt: row.created_at,
    };
}
