import { hostname } from 'node:os';
import { randomUUID } from 'node:crypto';
import { sql, type RawBuilder } from 'kysely';
import type { Database } from '../database.js';
import { JobLeasedError } from '../errors.js';
import { dbTimeFromNow } from '../internal/db-time.js';

/**
 * A lease owner id for this process: `name:pid:uuid`, `name` being the host name unless
 * the caller names itself (a worker's `IMAGEGEN_WORKER_NAME`; it must not contain `:`).
 * Only an owner named after this host is ever found dead by its pid (see `isDeadLocalOwner`).
 */
export function newLeaseOwner(name: string = hostname()): string {
  return `${name}:${process.pid}:${randomUUID()}`;
}

/** The name and pid of a lease owner id made by {@link newLeaseOwner} (pid NaN when it is not one). */
export function parseLeaseOwner(owner: string): { readonly name: string; readonly pid: number } {
  const [name = '', pid = ''] = owner.split(':');
  return { name, pid: Number(pid) };
}

/** Whether `owner` names a process of this host (by host name) that no longer exists. */
export function isDeadLocalOwner(owner: string): boolean {
  const { name, pid } = parseLeaseOwner(owner);
  if (name !== hostname() || !Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

/**
 * Takes the job's lease for `ttlMs`. One conditional update (its row lock decides
 * between racing claimers): free, ours, or expired. A lease held by a process on this
 * host that no longer exists (SIGKILL) is taken over at once instead of waiting for
 * it to expire.
 *
 * @throws {JobLeasedError} when another live process holds it.
 */
export async function claimJobLease(database: Database, jobId: string, owner: string, ttlMs: number): Promise<void> {
  const take = (condition: RawBuilder<boolean>) =>
    database.db
      .updateTable('jobs')
      .set({ lease_owner: owner, lease_until: dbTimeFromNow(ttlMs) })
      .where('id', '=', jobId)
      .where(condition)
      .returning('id')
      .executeTakeFirst();
  if (await take(sql<boolean>`(lease_owner is null or lease_owner = ${owner} or lease_until < now())`)) return;
  const row = await database.db.selectFrom('jobs').select('lease_owner').where('id', '=', jobId).executeTakeFirst();
  const holder = row?.lease_owner ?? null;
  if (holder !== null && isDeadLocalOwner(holder) && (await take(sql<boolean>`lease_owner = ${holder}`))) return;
  throw new JobLeasedError(jobId, holder ?? 'unknown');
}

/** Extends our lease; false when it is no longer ours (we stalled and another took it). */
export async function renewJobLease(database: Database, jobId: string, owner: string, ttlMs: number): Promise<boolean> {
  const row = await database.db
    .updateTable('jobs')
    .set({ lease_until: dbTimeFromNow(ttlMs) })
    .where('id', '=', jobId)
    .where('lease_owner', '=', owner)
    .returning('id')
    .executeTakeFirst();
  return row !== undefined;
}

/**
 * Gives the lease up (only if still ours). `lease_until` keeps the time of release: a job
 * left unheld (handed back, not finished) is found by the fleet's sweep a grace period
 * later (`claimUnattendedJob`) if nobody took it meanwhile.
 */
export async function releaseJobLease(database: Database, jobId: string, owner: string): Promise<void> {
  await database.db.updateTable('jobs').set({ lease_owner: null, lease_until: sql`now()` }).where('id', '=', jobId).where('lease_owner', '=', owner).execute();
}
