import { randomUUID } from 'node:crypto';
import { assertCount } from './assert.js';
/** Inserts an attach record owned by `userId`; the id is a fresh UUID. No lock: a new row. */
export async function createAttachment(database, attachment) {
    assertCount('byteSize', attachment.byteSize);
    const attachId = randomUUID();
    await database.db
        .insertInto('attachments')
        .values({
        id: attachId,
        user_id: attachment.userId,
        storage_key: attachment.storageKey,
        content_type: attachment.contentType,
        byte_size: attachment.byteSize,
        width: attachment.width,
        height: attachment.height,
        job_id: null,
        stage_index: null,
        slot_index: null,
        attempt: null,
    })
        .execute();
    return { attachId };
}
