/**
 * The arithmetic of one provider limit shared by a fleet of workers: how the limit moves
 * (AIMD with a slow probe), how it is split (max-min fair over the workers' demands), and
 * how much of its split a worker may take right now without the fleet ever holding more
 * than the limit. Pure functions; `rebalanceProviderShare` (db) applies them in one
 * transaction and `FleetLimiter` (streams) applies the result to the process's permits.
 *
 * ```
 * fleet limit 12 ─429─► 8 ─8 ok─► 9 ─9 ok─► 10 ─10 ok─► 11 ─(next to the last cut: 16x11 ok)─► 12 ─429─► 11
 * split of 8 over demands {a: 8, b: 2, c: 0} = {a: 6, b: 2, c: 0}
 * ```
 */

/** The shared limit's state, as stored (`provider_limits`). */
export interface SharedLimitState {
  /** Calls the fleet may have in flight. */
  readonly limit: number;
  /** Successes since the limit last moved. */
  readonly successes: number;
  /**
   * Bumped at every cut (only): a 429 seen under an older epoch came before the last cut
   * and does not cut again. Growth does not bump it, so a 429 reported by a worker that has
   * not heard of the latest growth steps still counts.
   */
  readonly epoch: number;
  /** The limit at which the last 429 came (0 = none yet): growth above it is slow. */
  readonly lastCutAt: number;
}

/** What one worker saw since its last rebalance. */
export interface SharedLimitReport {
  /** The shared epoch under which this worker saw a 429, or null when it saw none. */
  readonly rateLimitedAt: number | null;
  /**
   * The shared limit this worker was running under when it saw the 429. The fleet's limit
   * may have grown since (other workers' successes land first): the wall is below the
   * limit the refused call ran under, not below a limit nobody has tried yet.
   */
  readonly rateLimitedLimit?: number | null;
  readonly successes: number;
}

/** Bounds and shape of the shared limit's moves. */
export interface SharedLimitPolicy {
  readonly min: number;
  /** The ceiling: `IMAGEGEN_PROVIDER_MAX_INFLIGHT`, else the sum of the live workers' concurrency. */
  readonly max: number;
  /** Multiplicative decrease on a 429. Default {@link DEFAULT_SHARED_LIMIT_POLICY}. */
  readonly decrease?: number;
  /** Above the last cut, one step needs this many times `limit` successes. */
  readonly probeSlowdown?: number;
}

/**
 * Why 0.7 and not TCP's 0.5: a provider's concurrency quota is a fixed wall, not a queue that
 * drains; halving at every probe of the wall leaves a quarter of the quota unused on average.
 * Why the slow probe: the wall is where the last cut happened; growing back to just below it
 * is safe and fast, touching it again costs a refused call (and its retry delay), so it is
 * done 16 times less often. Measured (bench/fleet.ts, one worker of 8 against a provider
 * refusing above 6): with 4x the fleet probed the wall every ~1.5 s and 10% of the calls
 * were refused (a provider counts a call as in flight until its answer is sent, a moment
 * after the client has it, so the wall is met a little below it); with 16x, see BENCHMARKS.md.
 */
export const DEFAULT_SHARED_LIMIT_POLICY = Object.freeze({ decrease: 0.7, probeSlowdown: 16 });

/**
 * One step of the shared limit (AIMD). A 429 reported under the current epoch cuts the
 * limit once (`floor(limit x decrease)`, not below `min`; a failed probe, at or above the
 * last cut, or the key's first 429 ever, only steps back by one), from the limit the refused
 * call ran under when that is lower than the limit now, and remembers where; the other
 * reports of the same burst carry an older epoch by the time they land and change nothing
 * (the epoch moves at cuts only).
 * Successes add up; every `limit` of them (below the last cut) or `limit x probeSlowdown`
 * (at or above it) add one, up to `max`. A `max` that dropped (a worker left) clamps it.
 */
export function stepSharedLimit(state: SharedLimitState, report: SharedLimitReport, policy: SharedLimitPolicy): SharedLimitState {
  const decrease = policy.decrease ?? DEFAULT_SHARED_LIMIT_POLICY.decrease;
  const slowdown = policy.probeSlowdown ?? DEFAULT_SHARED_LIMIT_POLICY.probeSlowdown;
  const max = Math.max(policy.min, policy.max);
  if (report.rateLimitedAt !== null && report.rateLimitedAt === state.epoch) {
    // A failed probe (at or above the last cut) steps back to where the fleet ran fine; so
    // does the first 429 a key ever gets (no cut yet): the fleet starts below the wall (half
    // a worker's concurrency, see `rebalanceProviderShare`) and grew to it one step at a
    // time. A 429 anywhere below the last cut means the wall moved down: multiplicative.
    const refusedAt = Math.min(state.limit, report.rateLimitedLimit ?? state.limit);
    const probing = state.lastCutAt === 0 || refusedAt >= state.lastCutAt;
    const cut = probing ? refusedAt - 1 : Math.floor(refusedAt * decrease);
    const limit = Math.max(policy.min, Math.min(max, cut));
    return { limit, successes: 0, epoch: state.epoch + 1, lastCutAt: refusedAt };
  }
  if (state.limit > max) return { ...state, limit: max, successes: 0 };
  const successes = state.successes + report.successes;
  const needed = state.lastCutAt > 0 && state.limit + 1 >= state.lastCutAt ? state.limit * slowdown : state.limit;
  if (state.limit < max && successes >= needed) return { ...state, limit: state.limit + 1, successes: 0 };
  return { ...state, successes: state.limit < max ? successes : 0 };
}

/** A worker's claim on the shared limit. */
export interface FleetMember {
  readonly id: string;
  /** Attempts it would run now (in flight + waiting, at most its concurrency). */
  readonly demand: number;
}

/**
 * Max-min fair split of `limit` permits over the members' demands: permits go one at a
 * time, round robin in id order, to every member whose demand is not yet met. A member
 * never gets more than it asks; what nobody asks stays unassigned (a member whose demand
 * grows takes it at its next rebalance).
 *
 * @example fairTargets(8, [{ id: 'a', demand: 8 }, { id: 'b', demand: 2 }]) // a: 6, b: 2
 */
export function fairTargets(limit: number, members: readonly FleetMember[]): Map<string, number> {
  const sorted = [...members].sort((x, y) => (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
  const targets = new Map<string, number>(sorted.map((m) => [m.id, 0]));
  let remaining = Math.max(0, limit);
  let open = sorted.filter((m) => m.demand > 0);
  while (remaining > 0 && open.length > 0) {
    for (const m of open) {
      if (remaining === 0) break;
      targets.set(m.id, (targets.get(m.id) ?? 0) + 1);
      remaining--;
    }
    open = open.filter((m) => (targets.get(m.id) ?? 0) < m.demand);
  }
  return targets;
}

/** A worker's permits after a rebalance. */
export interface HeldShare {
  /** Permits it may start calls under from now on (its local limit; 0 = wait). */
  readonly limit: number;
  /**
   * Permits recorded as held: `limit`, or more while calls started under an older, larger
   * share are still in flight. The fleet counts these, so the sum of what is in flight
   * never passes the shared limit.
   */
  readonly held: number;
}

/**
 * What this worker may hold: its fair target, but never more than the shared limit minus
 * what the other live workers hold now (they give back what is above their own target at
 * their next rebalance). Recorded as held: at least its calls in flight, and at least the
 * limit it starts calls under until this share reaches it (`localLimit`): a rebalance is a
 * round trip, and calls keep starting under the old limit meanwhile. Recording only the
 * calls in flight when the rebalance began let the others take permits this worker was
 * still using: the provider saw 8 calls against a ceiling of 6 (test/e2e/fleet.test.ts,
 * under load). A lowered share is thus given back one rebalance later.
 */
export function nextHeldShare(options: {
  readonly target: number;
  readonly limit: number;
  readonly othersHeld: number;
  readonly inFlight: number;
  readonly localLimit?: number | undefined;
}): HeldShare {
  const free = Math.max(0, options.limit - options.othersHeld);
  const limit = Math.max(0, Math.min(options.target, free));
  return { limit, held: Math.max(limit, options.inFlight, options.localLimit ?? 0) };
}
