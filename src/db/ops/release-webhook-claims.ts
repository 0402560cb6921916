import { sql } from 'kysely';
import type { Database } from '../database.js';

/**
 * Gives back claimed deliveries whose sends `owner` abandoned (a shutdown cut them off
 * before an answer): due again now, for any dispatcher, with no attempt recorded (the
 * receiver may or may not have it; sending again is what at least once means). A row
 * another dispatcher claimed since, or that is no longer pending, is left alone.
 *
 * Locking: the rows, by the update, briefly; no other lock.
 */
export async function releaseWebhookClaims(database: Database, owner: string, ids: readonly string[]): Promise<number> {
  if (ids.length === 0) return 0;
  const result = await database.db
    .updateTable('webhook_deliveries')
    .set({ claimed_by: null, next_attempt_at: sql`now()` })
    .where('id', 'in', [...ids])
    .where('claimed_by', '=', owner)
    .where('status', '=', 'pending')
    .executeTakeFirst();
  return Number(result.numUpdatedRows);
}
