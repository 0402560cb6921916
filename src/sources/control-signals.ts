import { EMPTY, catchError, defer, exhaustMap, filter, from, interval, merge, of, share, switchMap, take, tap, timer, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import { isCancelRequested, type Database } from '../db/index.js';

/** Where a run's cancel and stop come from. */
export interface ControlSignalsConfig {
  readonly database: Database;
  readonly jobId: string;
  /** The job had a cancel request before this run started (it waited in the queue). */
  readonly cancelRequested: boolean;
  /** The caller's cancel (the library's `cancel$`). */
  readonly cancel$?: Observable<unknown> | undefined;
  /** The caller's shutdown (SIGINT/SIGTERM). */
  readonly stop$?: Observable<unknown> | undefined;
  /** Emits when another runner took the job's lease. */
  readonly leaseLost$: Observable<unknown>;
  /** How often the job row is asked for a cancel request from another process, in ms. */
  readonly cancelPollMs: number;
  /** How long in-flight attempts may finish after a stop before they are aborted, in ms. */
  readonly graceMs: number;
  readonly logger?: Logger | undefined;
}

/** The engine's two signals, plus whether the run was stopped (it then hands the job back). */
export interface ControlSignals {
  /** Aborts in-flight attempts; the job ends `cancelled` (or, after a stop, is handed back). */
  readonly cancel$: Observable<unknown>;
  /** No new attempts, in-flight ones finish: shutdown or a lost lease. Emits at most once. */
  readonly stop$: Observable<unknown>;
  /** Whether `stop$` has fired: attempts aborted from then on are `abandoned`, not failures. */
  readonly stopped: boolean;
}

/**
 * Emits `true` when someone asked (`imagegen cancel`, any process) to cancel the job,
 * polling the job row every `everyMs`. A failed poll is skipped, never an error: the next
 * poll asks again. A poll still running when the next tick comes is not doubled.
 *
 * ```
 * tick     ──t──t──t──t──
 * asked    ──f──f──#──T──      # = the database failed: skipped
 * result   ───────────T──
 * ```
 */
export function polledCancelRequest(database: Database, jobId: string, everyMs: number): Observable<true> {
  return interval(everyMs).pipe(
    exhaustMap(() => from(isCancelRequested(database, jobId)).pipe(catchError(() => EMPTY))),
    filter((asked): asked is true => asked),
  );
}

/**
 * Builds a run's control signals from every place a cancel or stop comes from.
 *
 * - `stop$` = the caller's stop or a lost lease, whichever comes first (shared: the
 *   engine and the grace timer see the same one).
 * - `cancel$` = a cancel requested before the run, the caller's cancel, the polled
 *   cancel request, or the grace period running out after a stop; shared by all its
 *   subscribers (one poll of the job row per tick however many stages listen) and replayed
 *   to a late one.
 *
 * ```
 * stop (caller)  ─────s──────────
 * lease lost     ────────────────
 * stop$          ─────(s|)
 * grace timer         ├─graceMs─┤
 * cancel$        ───────────────(c|)     unless a cancel came earlier
 * ```
 */
export function controlSignals(config: ControlSignalsConfig): ControlSignals {
  let stopped = false;
  const stop$ = merge(config.stop$ ?? EMPTY, config.leaseLost$).pipe(
    take(1),
    tap(() => {
      stopped = true;
      config.logger?.info('stop requested: no new attempts, in-flight attempts finish');
    }),
    share(),
  );
  // A job cancelled while it waited in the queue ends at once, with no provider call.
  const cancelledBefore$ = config.cancelRequested ? of(true) : EMPTY;
  // Shared: every stage of the job subscribes to it, and one poll per tick serves them all (it
  // was one poll per stage: a 3-stage job asked the job row 6 times a second); the poll stops
  // when no stage listens. A stage that subscribes after the cancel came gets it at once.
  let cancelled = false;
  const shared$ = merge(
    cancelledBefore$,
    config.cancel$ ?? EMPTY,
    polledCancelRequest(config.database, config.jobId, config.cancelPollMs),
    stop$.pipe(switchMap(() => timer(config.graceMs))),
  ).pipe(
    take(1),
    tap(() => (cancelled = true)),
    share(),
  );
  const cancel$ = defer(() => (cancelled ? of(true) : shared$));
  return {
    cancel$,
    stop$,
    get stopped() {
      return stopped;
    },
  };
}
