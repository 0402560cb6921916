import { sql } from 'kysely';
import type { Database } from '../database.js';
import { isDeadLocalOwner } from './job-lease.js';
import { dbTimeAgo, dbTimeFromNow } from '../internal/db-time.js';

/** What {@link claimUnattendedJob} took over, and why it was free. */
export interface UnattendedJob {
  readonly jobId: string;
  /** The lease owner that stopped renewing (a dead worker), or null when nobody held it. */
  readonly previousOwner: string | null;
}

/**
 * Takes over one job nobody runs, for `owner`, with a lease of `ttlMs`; null when there
 * is none. A job is unattended when it is `queued` or `running` and
 *
 * - its lease lapsed: the worker holding it stopped renewing (it died, on any host), or
 * - nobody has held it for `graceMs`: a submit whose queue message was lost, a job handed
 *   back, a worker that died between taking a queue message and claiming the lease, or
 * - its holder is a process of this host that no longer exists (SIGKILL): taken at once.
 *
 * Highest `priority` first, then oldest. One statement per candidate: the row is picked
 * `for update skip locked`, so two sweeping workers never wait on each other and never
 * take the same job; the update's own condition repeats the test, so a lease renewed in
 * between is left alone. The caller then runs the job (its `runStoredJob` claims the same
 * lease again as its owner and resumes it exactly).
 */
export async function claimUnattendedJob(database: Database, owner: string, ttlMs: number, graceMs: number): Promise<UnattendedJob | null> {
  const lease = dbTimeFromNow(ttlMs);
  const grace = dbTimeAgo(graceMs);
  const unattended = sql<boolean>`(
    (lease_owner is not null and lease_until < now()) or
    (lease_owner is null and coalesce(lease_until, updated_at) < ${grace})
  )`;
  const taken = await database.db.transaction().execute(async (trx) => {
    const row = await trx
      .selectFrom('jobs')
      .select(['id', 'lease_owner'])
      .where('status', 'in', ['queued', 'running'])
      .where(unattended)
      .orderBy('priority', 'desc')
      .orderBy('created_at')
      .limit(1)
      .forUpdate()
      .skipLocked()
      .executeTakeFirst();
    if (!row) return null;
    await trx.updateTable('jobs').set({ lease_owner: owner, lease_until: lease }).where('id', '=', row.id).execute();
    return { jobId: row.id, previousOwner: row.lease_owner };
  });
  if (taken) return taken;

  // Leases still running on the clock whose holder is a dead process of this host.
  const held = await database.db
    .selectFrom('jobs')
    .select(['id', 'lease_owner'])
    .where('status', 'in', ['queued', 'running'])
    .where('lease_owner', 'is not', null)
    .where('lease_owner', '!=', owner)
    .where('lease_until', '>=', sql<Date>`now()`)
    .orderBy('priority', 'desc')
    .orderBy('created_at')
    .limit(50)
    .execute();
  for (const row of held) {
    const holder = row.lease_owner as string;
    if (!isDeadLocalOwner(holder)) continue;
    const took = await database.db
      .updateTable('jobs')
      .set({ lease_owner: owner, lease_until: lease })
      .where('id', '=', row.id)
      .where('lease_owner', '=', holder)
      .where('status', 'in', ['queued', 'running'])
      .returning('id')
      .executeTakeFirst();
    if (took) return { jobId: row.id, previousOwner: holder };
  }
  return null;
}
