import { AsyncSubject, EMPTY, catchError, concat, defer, filter, finalize, from, ignoreElements, interval, mergeMap, throwError, type Observable, type Subscription } from 'rxjs';
import type { Logger } from 'pino';
import { claimJobLease, releaseJobLease, renewJobLease, retryTransient, type Database } from '../db/index.js';

/** Renewals per lease lifetime: the lease is renewed every `ttlMs / RENEWALS_PER_TTL`. */
export const RENEWALS_PER_TTL = 3;

/** Settings of one run's {@link JobLease}. */
export interface JobLeaseConfig {
  /** The lease owner id (`host:pid:uuid`, see `newLeaseOwner`). */
  readonly owner: string;
  /** How long the lease lasts without renewal, in ms. */
  readonly ttlMs: number;
  readonly logger?: Logger | undefined;
}

/**
 * The lease a run holds on its job row: only its holder runs the job, so the orphan
 * sweep never races another runner's upload and no slot is attempted by two processes.
 *
 * Held from {@link JobLease.claim} until the first successful release; renewed every
 * `ttlMs / 3` meanwhile. A renewal that finds the lease taken (this process stalled past
 * the TTL and another runner claimed it) emits on `lost$` and renewing stops; a renewal
 * that fails (connection lost) is not a loss: the next tick tries again.
 *
 * ```
 * claim ──r──r──r──(release)       r = renewal every ttlMs/3, held
 * lost$ ─────────────|             completes without a value when released
 * claim ──r──x                     x = renewal found another owner
 * lost$ ─────(L|)                  L: the run stops (see control signals)
 * ```
 */
export class JobLease {
  /** Emits once (then completes) when a renewal finds the lease gone; completes empty on release. */
  readonly lost$: Observable<void>;
  readonly #lost = new AsyncSubject<void>();
  readonly #renewals: Subscription;
  #releasing: Promise<void> | null = null;
  /** Renewing stopped: released or lost. */
  #ended = false;

  private constructor(
    private readonly database: Database,
    readonly jobId: string,
    private readonly config: JobLeaseConfig,
  ) {
    this.lost$ = this.#lost.asObservable();
    this.#renewals = interval(config.ttlMs / RENEWALS_PER_TTL)
      .pipe(
        // A failed renewal (connection lost) is not a lost lease: try again next tick.
        mergeMap(() => from(renewJobLease(database, jobId, config.owner, config.ttlMs)).pipe(catchError(() => EMPTY))),
        filter((held) => !held),
      )
      .subscribe(() => this.markLost());
  }

  /** This run's lease owner id. */
  get owner(): string {
    return this.config.owner;
  }

  /**
   * The lease is gone (a renewal or a delivery found another owner): `lost$` emits, renewing
   * stops. Does nothing after a release or a first loss.
   */
  markLost(): void {
    if (this.#ended || this.#releasing) return;
    this.config.logger?.error('lost the job lease to another runner: stopping');
    this.#lost.next();
    this.#stopRenewing();
  }

  /**
   * Takes the job's lease (a lost connection is retried) and starts renewing it.
   *
   * @throws {JobLeasedError} when another live process holds it.
   */
  static async claim(database: Database, jobId: string, config: JobLeaseConfig): Promise<JobLease> {
    await retryTransient(() => claimJobLease(database, jobId, config.owner, config.ttlMs));
    return new JobLease(database, jobId, config);
  }

  /** Renews the lease now; false when it is no longer ours (a hand-back then leaves the job alone). */
  stillHeld(): Promise<boolean> {
    return retryTransient(() => renewJobLease(this.database, this.jobId, this.config.owner, this.config.ttlMs));
  }

  /**
   * Gives the lease back (a lost connection is retried), awaited by the run's normal ends so
   * the next runner finds the job free once `job:finished` is out. Idempotent: after one
   * successful release every call returns it; a failed one throws and may be tried again.
   */
  release(): Promise<void> {
    this.#stopRenewing();
    this.#releasing ??= retryTransient(() => releaseJobLease(this.database, this.jobId, this.config.owner)).catch((error: unknown) => {
      this.#releasing = null;
      throw error;
    });
    return this.#releasing;
  }

  /**
   * Gives the lease back on an error or unsubscribe path: one try, a failure is only
   * logged (the lease then expires after its TTL). Does nothing after a release.
   */
  releaseQuietly(): Promise<void> {
    this.#stopRenewing();
    this.#releasing ??= releaseJobLease(this.database, this.jobId, this.config.owner).catch((error: unknown) => {
      this.config.logger?.warn({ err: error }, 'lease release failed');
    });
    return this.#releasing.catch(() => undefined);
  }

  #stopRenewing(): void {
    this.#ended = true;
    this.#renewals.unsubscribe();
    this.#lost.complete();
  }
}

/**
 * Runs `body` while holding the job's lease: a resource scope (RxJS `using`, with an
 * async acquire). The lease is claimed on subscription, renewed while the scope lives,
 * and released exactly once on every path:
 *
 * - **complete / hand-back**: `body` releases it itself with `lease.release()` before its
 *   last value (awaited, so the next runner finds the job free); anything it left held is
 *   released at teardown.
 * - **error**: released (one try) *before* the error is passed on, so a run that fails
 *   (before or after its engine started) gives the job back at once, not after the TTL.
 * - **unsubscribe**: released at teardown, also when that happens while the claim is
 *   still in flight (the lease is given back once the claim lands).
 *
 * A claim that fails (another live runner holds the lease) errors the scope; nothing
 * is released then, the lease is not ours.
 *
 * ```
 * body     ──a──b──(R)──c|        R = body's own release
 * result   ──a──b───────c|
 * body     ──a──#                 # = error
 * result   ──a──(release)#
 * ```
 *
 * @example
 * usingJobLease(database, jobId, { owner, ttlMs: 30_000 }, (lease) => runLeased(lease));
 */
export function usingJobLease<T>(database: Database, jobId: string, config: JobLeaseConfig, body: (lease: JobLease) => Observable<T>): Observable<T> {
  return defer(() => {
    const claiming = JobLease.claim(database, jobId, config);
    return from(claiming).pipe(
      mergeMap((lease) =>
        defer(() => body(lease)).pipe(
          catchError((error: unknown) => concat(from(lease.releaseQuietly()).pipe(ignoreElements()), throwError(() => error))),
        ),
      ),
      finalize(() => void claiming.then((lease) => lease.releaseQuietly(), () => undefined)),
    );
  });
}
