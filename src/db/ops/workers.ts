import { sql } from 'kysely';
import type { Database } from '../database.js';
import { parseLeaseOwner } from './job-lease.js';
import { dbTimeFromNow } from '../internal/db-time.js';

/** A worker joining the fleet. */
export interface NewWorker {
  /** Its lease owner id (`name:pid:uuid`). */
  readonly id: string;
  readonly name: string;
  readonly pid: number;
  /** The provider key's hash (never the key), or null. */
  readonly providerKey: string | null;
  readonly concurrency: number;
  /** `IMAGEGEN_PROVIDER_MAX_INFLIGHT`, or null. */
  readonly providerCeiling: number | null;
  /** Alive this long unless it sends a heartbeat (`rebalanceProviderShare`). */
  readonly ttlMs: number;
}

/**
 * Registers a worker (one row, its heartbeat the `alive_until`). Rows of workers dead for
 * more than an hour are removed on the way: `imagegen workers` lists the live ones only.
 */
export async function registerWorker(database: Database, worker: NewWorker): Promise<void> {
  await database.db.deleteFrom('workers').where('alive_until', '<', sql<Date>`now() - interval '1 hour'`).execute();
  await database.db
    .insertInto('workers')
    .values({
      id: worker.id,
      name: worker.name,
      pid: worker.pid,
      provider_key: worker.providerKey,
      concurrency: worker.concurrency,
      provider_ceiling: worker.providerCeiling,
      alive_until: dbTimeFromNow(worker.ttlMs),
    })
    .execute();
}

/** A worker that stops cleanly leaves at once: its share of the provider limit is free. */
export async function removeWorker(database: Database, workerId: string): Promise<void> {
  await database.db.deleteFrom('workers').where('id', '=', workerId).execute();
}

/** A live worker, as `imagegen workers` shows it. */
export interface WorkerInfo {
  readonly id: string;
  readonly name: string;
  readonly pid: number;
  readonly startedAt: string;
  readonly lastHeartbeatAt: string;
  /** Job ids whose lease it holds. */
  readonly jobs: readonly string[];
  readonly attemptsInFlight: number;
  /** Permits of the shared provider limit it holds. */
  readonly held: number;
  readonly concurrency: number;
}

/** The live workers (heartbeat within their TTL), oldest first, with the jobs they hold. */
export async function listWorkers(database: Database): Promise<WorkerInfo[]> {
  const rows = await database.db
    .selectFrom('workers')
    .selectAll()
    .where('alive_until', '>', sql<Date>`now()`)
    .orderBy('started_at')
    .orderBy('id')
    .execute();
  const leases = rows.length === 0 ? [] : await database.db
    .selectFrom('jobs')
    .select(['id', 'lease_owner'])
    .where('lease_owner', 'in', rows.map((r) => r.id))
    .where('status', 'in', ['queued', 'running'])
    .orderBy('id')
    .execute();
  return rows.map((r) => ({
    id: r.id,
    name: r.name,
    pid: r.pid,
    startedAt: new Date(r.started_at).toISOString(),
    lastHeartbeatAt: new Date(r.heartbeat_at).toISOString(),
    jobs: leases.filter((l) => l.lease_owner === r.id).map((l) => l.id),
    attemptsInFlight: r.in_flight,
    held: r.held,
    concurrency: r.concurrency,
  }));
}

/** Who runs a job now: its lease holder (a worker, or a `run` process) while the lease lasts. */
export interface JobRunner {
  /** The lease owner id (`name:pid:uuid`). */
  readonly id: string;
  /** The name and pid from the id (a `run` process has no worker row). */
  readonly name: string;
  readonly pid: number;
  /** True when the holder is a registered live worker. */
  readonly worker: boolean;
  readonly leaseUntil: string;
}

/** The process holding a job's lease now, or null (nobody runs it, or its lease lapsed). */
export async function findJobRunner(database: Database, jobId: string): Promise<JobRunner | null> {
  const row = await database.db
    .selectFrom('jobs')
    .leftJoin('workers', (join) => join.onRef('workers.id', '=', 'jobs.lease_owner').on('workers.alive_until', '>', sql<Date>`now()`))
    .select(['jobs.lease_owner', 'jobs.lease_until', 'workers.id as worker_id'])
    .where('jobs.id', '=', jobId)
    .where('jobs.lease_owner', 'is not', null)
    .where('jobs.lease_until', '>', sql<Date>`now()`)
    .executeTakeFirst();
  if (!row?.lease_owner || !row.lease_until) return null;
  return { id: row.lease_owner, ...parseLeaseOwner(row.lease_owner), worker: row.worker_id !== null, leaseUntil: new Date(row.lease_until).toISOString() };
}
