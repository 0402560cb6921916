import type { Database } from '../database.js';

/**
 * The number of job `jobId`'s last logged event (`jobs.event_seq`; 0 before its first),
 * or null when the job does not exist. A follower that reads this and then the events
 * after it misses none: numbers commit in order and without holes (`appendJobEvents`).
 * One plain read, no lock.
 */
export async function getJobEventSeq(database: Database, jobId: string): Promise<number | null> {
  const row = await database.db.selectFrom('jobs').select('event_seq').where('id', '=', jobId).executeTakeFirst();
  return row?.event_seq ?? null;
}
