import { sql } from 'kysely';
import type { Database } from '../database.js';
import { fairTargets, nextHeldShare, stepSharedLimit, type HeldShare, type SharedLimitReport } from '../../engine/fleet-share.js';
import { dbTimeFromNow } from '../internal/db-time.js';

/** One worker's heartbeat and its report on the provider it calls. */
export interface ProviderShareReport extends SharedLimitReport {
  /** The worker (its lease owner id), registered with `registerWorker`. */
  readonly workerId: string;
  /** The provider key's hash (never the key). */
  readonly providerKey: string;
  /** Attempts it would run now: in flight + waiting, at most its concurrency. */
  readonly demand: number;
  readonly inFlight: number;
  /** The limit the worker starts calls under until this rebalance's share reaches it (its current local limit). */
  readonly localLimit?: number | undefined;
  /** The worker counts as alive this long after this heartbeat. */
  readonly ttlMs: number;
}

/** What the fleet granted, and the shared limit it was cut from. */
export interface ProviderShare extends HeldShare {
  /** The fleet's limit for this provider key now. */
  readonly sharedLimit: number;
  readonly epoch: number;
  /** True when this rebalance moved the shared limit (the others should rebalance soon). */
  readonly moved: boolean;
  /** Live workers sharing the key, this one included. */
  readonly workers: number;
}

/**
 * A worker's heartbeat and its share of the fleet's provider limit, in one transaction.
 *
 * Locks the key's `provider_limits` row (`for update`, created by the first worker), so the
 * rebalances of all workers of one key are serialised: each sees the others' last recorded
 * holdings. Under that lock it applies this worker's report to the shared limit
 * (`stepSharedLimit`: a 429 cuts it once per epoch; successes grow it), splits the limit
 * fairly over the live workers' demands (`fairTargets`), and takes at most what the others
 * do not hold (`nextHeldShare`). Invariant: the sum of `held` over live workers never passes
 * the limit, except by calls already in flight when the limit was cut; every worker starts
 * calls only under its own `limit` (<= its `held`), so the fleet never starts a call beyond
 * the shared limit. A dead worker (its `alive_until` passed) holds nothing.
 *
 * The ceiling is the smallest `provider_ceiling` of the live workers, else the sum of their
 * concurrency (an unset ceiling lets AIMD find the provider's limit).
 */
export async function rebalanceProviderShare(database: Database, report: ProviderShareReport): Promise<ProviderShare> {
  return database.db.transaction().execute(async (trx) => {
    const me = await trx
      .updateTable('workers')
      .set({ heartbeat_at: sql`now()`, alive_until: dbTimeFromNow(report.ttlMs) })
      .where('id', '=', report.workerId)
      .returning(['concurrency', 'provider_ceiling'])
      .executeTakeFirst();
    if (!me) throw new Error(`worker ${report.workerId} is not registered`);
    // Slow start: below the wall, not at it. An operator's ceiling is the known limit; without
    // one, half the first worker's concurrency, grown by one per window of successes (a key's
    // first 429 then steps back by one, `stepSharedLimit`). Starting at the concurrency sent a
    // burst of 429s at every fleet's start (BENCHMARKS.md 9A). A key's row outlives its
    // workers: the next fleet starts where the last one left the limit.
    const initial = me.provider_ceiling ?? Math.max(1, Math.ceil(me.concurrency / 2));
    await trx.insertInto('provider_limits').values({ key: report.providerKey, current_limit: initial }).onConflict((oc) => oc.column('key').doNothing()).execute();
    const row = await trx.selectFrom('provider_limits').selectAll().where('key', '=', report.providerKey).forUpdate().executeTakeFirstOrThrow();
    const others = await trx
      .selectFrom('workers')
      .select(['id', 'demand', 'held', 'concurrency', 'provider_ceiling'])
      .where('provider_key', '=', report.providerKey)
      .where('alive_until', '>', sql<Date>`now()`)
      .where('id', '!=', report.workerId)
      .execute();
    const ceilings = [me.provider_ceiling, ...others.map((o) => o.provider_ceiling)].filter((c): c is number => c !== null);
    const max = ceilings.length > 0 ? Math.min(...ceilings) : me.concurrency + others.reduce((sum, o) => sum + o.concurrency, 0);
    const state = { limit: row.current_limit, successes: row.successes, epoch: row.epoch, lastCutAt: row.last_cut_at };
    const next = stepSharedLimit(state, report, { min: 1, max });
    const demand = Math.min(report.demand, me.concurrency);
    const targets = fairTargets(next.limit, [...others.map((o) => ({ id: o.id, demand: o.demand })), { id: report.workerId, demand }]);
    const othersHeld = others.reduce((sum, o) => sum + o.held, 0);
    const share = nextHeldShare({ target: targets.get(report.workerId) ?? 0, limit: next.limit, othersHeld, inFlight: report.inFlight, localLimit: report.localLimit });
    // A cut is a 429's (the epoch moves); a clamp when a worker left is not.
    const cut = next.epoch !== state.epoch;
    await trx
      .updateTable('provider_limits')
      .set({
        current_limit: next.limit,
        successes: next.successes,
        epoch: next.epoch,
        last_cut_at: next.lastCutAt,
        cuts: cut ? sql`cuts + 1` : sql`cuts`,
        updated_at: sql`now()`,
      })
      .where('key', '=', report.providerKey)
      .execute();
    await trx.updateTable('workers').set({ demand, held: share.held, in_flight: report.inFlight }).where('id', '=', report.workerId).execute();
    return { ...share, sharedLimit: next.limit, epoch: next.epoch, moved: next.epoch !== state.epoch || next.limit !== state.limit, workers: others.length + 1 };
  });
}
