import { EMPTY, Observable, Subject, catchError, from, interval, merge, throttleTime, type Subscription } from 'rxjs';
import type { Logger } from 'pino';
import { rebalanceProviderShare, registerWorker, removeWorker, type Database, type ProviderShare } from '../db/index.js';
import { ConcurrencyLimiter, type Permit } from '../engine/concurrency-limiter.js';
import { DEFAULT_SHARED_LIMIT_POLICY } from '../engine/fleet-share.js';
import type { Share } from '../engine/fair-queue.js';
import type { ProviderLimiter } from '../engine/provider-limiter.js';
import { exhaustMapWithTrailing } from '../operators/exhaust-map-with-trailing.js';

/** The NOTIFY channel on which a worker that moved a shared limit tells the others (payload: the key's hash). */
export const PROVIDER_LIMIT_CHANNEL = 'imagegen_provider_limit';

/** How often a worker rebalances (and sends its heartbeat) by default, in ms. */
export const DEFAULT_REBALANCE_MS = 1_000;

/** Settings of one worker's {@link FleetLimiter}. */
export interface FleetLimiterConfig {
  readonly database: Database;
  /** The worker's id (its lease owner id). */
  readonly workerId: string;
  /** Shown by `imagegen workers`: the host name or `IMAGEGEN_WORKER_NAME`. */
  readonly name: string;
  /** The provider key's hash (never the key): workers with the same one share a limit. */
  readonly providerKey: string;
  /** This worker's own ceiling of attempts in flight (`IMAGEGEN_CONCURRENCY`). */
  readonly concurrency: number;
  /** `IMAGEGEN_PROVIDER_MAX_INFLIGHT`: the fleet's static ceiling. Default none (AIMD finds it). */
  readonly providerMaxInFlight?: number | undefined;
  /** `IMAGEGEN_PROVIDER_MAX_PER_MINUTE`: calls the fleet may start per minute. Default none. */
  readonly providerMaxPerMinute?: number | undefined;
  /** `IMAGEGEN_MAX_INFLIGHT_PER_USER`: attempts of one user in flight across the fleet. Default none. */
  readonly maxInFlightPerUser?: number | undefined;
  /** A worker whose heartbeat is older than this is dead to the others (`IMAGEGEN_LEASE_TTL_SECONDS`). */
  readonly ttlMs: number;
  /** How often to rebalance and send the heartbeat. Default {@link DEFAULT_REBALANCE_MS}. */
  readonly rebalanceMs?: number | undefined;
  readonly logger?: Logger | undefined;
}

/**
 * The process-wide attempt limiter of a worker in a fleet: the permits of one provider
 * limit shared by every worker that calls the provider with the same key, kept in
 * PostgreSQL (`rebalanceProviderShare`).
 *
 * No database round trip per call: the worker holds a *share* of the limit and starts calls
 * under it locally (a {@link ConcurrencyLimiter} with fair share across users and jobs). The
 * share is rebalanced every `rebalanceMs` (this is also the worker's heartbeat), and at once
 * when a call is refused with a 429 or another worker moved the limit (NOTIFY on
 * {@link PROVIDER_LIMIT_CHANNEL}); when the worker is starved (work waiting, no permit), at
 * most every 100 ms. Rebalances never overlap, and a reason to rebalance that comes while one
 * runs is not dropped: one more follows it (`exhaustMapWithTrailing`). A 429 or a cut that
 * came during a rebalance would otherwise wait for the next tick while the fleet ran above
 * the wall (BENCHMARKS.md 9A).
 *
 * - A 429 cuts this worker's own limit at once (x0.7, as the fleet's will be) and reports the
 *   shared epoch it saw: the fleet's limit is cut once per burst, however many workers saw it.
 * - Successes are reported and grow the fleet's limit (AIMD, `stepSharedLimit`).
 * - A worker that cannot send its heartbeat for a TTL is dead to the others, which take its
 *   permits: it then starts no new call (its limit drops to 0) until a rebalance lands.
 *
 * ```
 * rebalance ──r──────r──(429)r──────r──     r = heartbeat + share (one transaction)
 * limit     ──4──────4──2────3──────4──     local limit: the share, cut at once on 429
 * ```
 */
export class FleetLimiter extends ConcurrencyLimiter implements ProviderLimiter {
  readonly max: number;
  readonly #config: FleetLimiterConfig;
  /** Starved: work waiting and no permit free (throttled, it comes with every queued call). */
  readonly #kick = new Subject<void>();
  /** A 429 here, or the limit moved elsewhere: rebalance now. */
  readonly #urgent = new Subject<void>();
  #loop: Subscription | undefined;
  #unlisten: (() => Promise<void>) | undefined;
  #epoch = 0;
  #sharedEpoch = 0;
  #rateLimitedAt: number | null = null;
  #rateLimitedLimit: number | null = null;
  #successes = 0;
  #lastBeatAt = 0;
  #last: ProviderShare | undefined;

  constructor(config: FleetLimiterConfig) {
    super(1);
    this.#config = config;
    this.max = config.concurrency;
  }

  protected override get epoch(): number {
    return this.#epoch;
  }

  /** The last share the fleet granted (undefined before {@link start}). */
  get share(): ProviderShare | undefined {
    return this.#last;
  }

  /**
   * Joins the fleet: registers the worker, takes a first share (awaited), then keeps
   * rebalancing until {@link stop}.
   */
  async start(): Promise<void> {
    const { database, workerId, name, providerKey, concurrency, providerMaxInFlight, ttlMs } = this.#config;
    await registerWorker(database, { id: workerId, name, pid: process.pid, providerKey, concurrency, providerCeiling: providerMaxInFlight ?? null, ttlMs });
    await this.#rebalance();
    const every = this.#config.rebalanceMs ?? DEFAULT_REBALANCE_MS;
    this.#unlisten = await database
      .listen(PROVIDER_LIMIT_CHANNEL, (payload) => {
        if (payload === providerKey) this.#urgent.next();
      })
      .catch((error: unknown) => {
        this.#config.logger?.warn({ err: error }, 'provider limit notifications unavailable: rebalancing on the timer only');
        return undefined;
      });
    const kicks: Observable<unknown> = this.#kick.pipe(throttleTime(Math.min(100, every), undefined, { leading: true, trailing: true }));
    this.#loop = merge(interval(every), kicks, this.#urgent)
      .pipe(exhaustMapWithTrailing(() => from(this.#rebalance()).pipe(catchError(() => EMPTY))))
      .subscribe();
  }

  /** Leaves the fleet: no more heartbeats; the row is removed so the share is free at once. */
  async stop(): Promise<void> {
    this.#loop?.unsubscribe();
    await this.#unlisten?.().catch(() => undefined);
    await removeWorker(this.#config.database, this.#config.workerId).catch((error: unknown) => {
      this.#config.logger?.warn({ err: error }, 'could not remove the worker row; it expires with its heartbeat');
    });
  }

  override run<T>(work: (permit: Permit) => Observable<T>, share?: Share): Observable<T> {
    const inner = super.run(work, share);
    return new Observable<T>((subscriber) => {
      const subscription = inner.subscribe(subscriber);
      // Work is waiting and no permit is free: ask the fleet now, not at the next tick.
      if (this.waiting > 0 && this.active >= this.limit) this.#kick.next();
      return subscription;
    });
  }

  /** A call that started with `permit` was rate limited: cut at once, report to the fleet. */
  onRateLimited(permit: Permit): void {
    if (permit.epoch !== this.#epoch) return;
    this.#epoch++;
    this.#rateLimitedAt = this.#sharedEpoch;
    this.#rateLimitedLimit = this.#last?.sharedLimit ?? null;
    this.setLimit(Math.max(1, Math.floor(this.limit * DEFAULT_SHARED_LIMIT_POLICY.decrease)));
    this.#urgent.next();
  }

  onSuccess(): void {
    this.#successes++;
  }

  async #rebalance(): Promise<void> {
    const { database, workerId, providerKey, ttlMs, concurrency, logger } = this.#config;
    const successes = this.#successes;
    const rateLimitedAt = this.#rateLimitedAt;
    const rateLimitedLimit = this.#rateLimitedLimit;
    this.#successes = 0;
    this.#rateLimitedAt = null;
    this.#rateLimitedLimit = null;
    let share: ProviderShare;
    try {
      share = await rebalanceProviderShare(database, {
        workerId,
        providerKey,
        ttlMs,
        demand: Math.min(concurrency, this.active + this.waiting),
        inFlight: this.active,
        // Calls may start under the current limit until the new share is applied: held covers them.
        localLimit: this.limit,
        rateLimitedAt,
        rateLimitedLimit,
        successes,
      });
    } catch (error) {
      // Not reported: kept for the next try. A worker silent for a TTL is dead to the others.
      this.#successes += successes;
      this.#rateLimitedAt ??= rateLimitedAt;
      this.#rateLimitedLimit ??= rateLimitedLimit;
      if (Date.now() - this.#lastBeatAt >= ttlMs && this.limit > 0) {
        logger?.error({ err: error }, 'no heartbeat for a TTL: the fleet has taken this worker\'s share; no new calls until the database answers');
        this.#apply(0);
      }
      throw error;
    }
    this.#lastBeatAt = Date.now();
    const moved = this.#last !== undefined && (share.epoch !== this.#sharedEpoch || share.sharedLimit !== this.#last.sharedLimit);
    this.#sharedEpoch = share.epoch;
    this.#last = share;
    this.#apply(share.limit);
    const perMinute = this.#config.providerMaxPerMinute;
    if (perMinute !== undefined) this.setMaxPerMinute(share.limit === 0 ? undefined : Math.max(1, Math.floor((perMinute * share.limit) / share.sharedLimit)));
    const perUser = this.#config.maxInFlightPerUser;
    if (perUser !== undefined) this.setUserCap(Math.max(1, Math.floor((perUser * share.limit) / share.sharedLimit)));
    if (share.moved) {
      logger?.info({ sharedLimit: share.sharedLimit, held: share.held, workers: share.workers }, 'provider limit moved');
      await database.notify(PROVIDER_LIMIT_CHANNEL, providerKey).catch(() => undefined);
    } else if (moved) {
      logger?.debug({ sharedLimit: share.sharedLimit, held: share.held }, 'provider limit moved by another worker');
    }
  }

  #apply(limit: number): void {
    if (limit === this.limit) return;
    this.#epoch++;
    this.setLimit(limit);
  }
}
