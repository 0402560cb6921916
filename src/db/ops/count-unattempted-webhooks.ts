import type { Database } from '../database.js';

/**
 * How many of job `jobId`'s webhook deliveries are still pending without any attempt:
 * `imagegen run` waits (a bounded time) for this to reach 0 before it exits, so its own
 * job's deliveries get their first try. A plain count, no lock.
 */
export async function countUnattemptedWebhooks(database: Database, jobId: string): Promise<number> {
  const row = await database.db
    .selectFrom('webhook_deliveries')
    .select((eb) => eb.fn.countAll<number>().as('n'))
    .where('job_id', '=', jobId)
    .where('status', '=', 'pending')
    .where('attempts', '=', 0)
    .executeTakeFirstOrThrow();
  return Number(row.n);
}
