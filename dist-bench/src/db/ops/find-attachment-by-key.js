/**
 * The attach record of `userId` that points at `storageKey`, if any. Input images
 * are stored under content-addressed keys, so importing the same file twice reuses
 * one attach record. No lock: a duplicate row in a race costs one extra record.
 */
export async function findAttachmentByKey(database, userId, storageKey) {
    const row = await database.db
        .selectFrom('attachments')
        .select('id')
        .where('user_id', '=', userId)
        .where('storage_key', '=', storageKey)
        .where('job_id', 'is', null)
        .orderBy('created_at')
        .executeTakeFirst();
    return row?.id ?? null;
}
