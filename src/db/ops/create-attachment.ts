import { randomUUID } from 'node:crypto';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';

/** An attach record not tied to a slot (e.g. a stage's input image). */
export interface NewAttachment {
  readonly userId: string;
  readonly storageKey: string;
  readonly contentType: string;
  readonly byteSize: number;
  readonly width: number | null;
  readonly height: number | null;
}

/** Inserts an attach record owned by `userId`; the id is a fresh UUID. No lock: a new row. */
export async function createAttachment(database: Database, attachment: NewAttachment): Promise<{ attachId: string }> {
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
