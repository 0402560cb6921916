import { firstValueFrom } from 'rxjs';
import type { Logger } from 'pino';
import { listDeliveredStorageKeys, type Database } from '../db/index.js';
import type { ObjectStore } from './object-store.js';
import { generatedImagePrefix } from './storage-keys.js';

/** Tries of an orphan sweep before it gives up. */
export const SWEEP_TRIES = 3;
/** Pause after the first failed try; each next pause is four times longer (100 ms, 400 ms). */
export const SWEEP_FIRST_PAUSE_MS = 100;

/** What an orphan sweep reads and deletes. */
export interface OrphanSweepDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly logger?: Logger | undefined;
}

/**
 * What a sweep that still fails after {@link SWEEP_TRIES} does:
 * - `refuse`: throws (at the start of a run, so a storage outage leaves the job as it
 *   was instead of spending its budget);
 * - `warn`: logs and returns (after the job ended; orphans cost storage, never correctness:
 *   the next run or replay of the job sweeps again).
 */
export type SweepFailure = 'refuse' | 'warn';

/**
 * Removes the job's orphan objects: uploads under `generated/<jobId>/` that no committed
 * attach record points to (an attempt uploaded, then its delivery never committed), plus
 * the store's incomplete uploads, retrying a storage or database error. Run only by the
 * job's lease holder, so it never races another runner's upload.
 *
 * ```
 * try 1 ──#            # = LIST, DELETE or the database failed
 * pause    ├100ms┤
 * try 2 ──────────#
 * pause            ├─400ms─┤
 * try 3 ───────────────────#   → refuse: throws; warn: logged, resolves
 * ```
 */
export async function sweepOrphans(deps: OrphanSweepDeps, jobId: string, onFailure: SweepFailure): Promise<void> {
  for (let tried = 1; ; tried++) {
    try {
      await removeOrphans(deps, jobId);
      return;
    } catch (error) {
      if (tried >= SWEEP_TRIES) {
        if (onFailure === 'refuse') throw error;
        deps.logger?.warn({ err: error }, 'orphan sweep failed: left for the next run of the job');
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, SWEEP_FIRST_PAUSE_MS * 4 ** (tried - 1)));
    }
  }
}

/** One sweep: objects under the job's prefix that no committed attach record points to. Returns how many went. */
export async function removeOrphans(deps: OrphanSweepDeps, jobId: string): Promise<number> {
  const { database, store, logger } = deps;
  const [keys, delivered] = await Promise.all([firstValueFrom(store.list(generatedImagePrefix(jobId))), listDeliveredStorageKeys(database, jobId)]);
  const orphans = keys.filter((key) => !delivered.has(key));
  for (const key of orphans) await firstValueFrom(store.delete(key), { defaultValue: undefined });
  const incomplete = store.removeIncomplete ? await firstValueFrom(store.removeIncomplete(generatedImagePrefix(jobId)), { defaultValue: 0 }) : 0;
  if (orphans.length + incomplete > 0) logger?.info({ orphans: orphans.length, incomplete }, 'removed objects of deliveries that never committed');
  return orphans.length + incomplete;
}
