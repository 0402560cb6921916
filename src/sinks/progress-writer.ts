import {
  asyncScheduler,
  catchError,
  concat,
  concatMap,
  connect,
  defer,
  EMPTY,
  filter,
  finalize,
  from,
  groupBy,
  ignoreElements,
  map,
  merge,
  mergeMap,
  of,
  ReplaySubject,
  Subject,
  takeUntil,
  takeWhile,
  tap,
  throttleTime,
  timer,
  type MonoTypeOperatorFunction,
  type Observable,
  type SchedulerLike,
} from 'rxjs';
import type { PipelineEvent, SlotDeliveredEvent } from '../domain/events.js';
import { appendProgress, encodeNotification, notifyEach, PROGRESS_CHANNEL, toNotifiedEvent, type Database } from '../db/index.js';
import { exhaustMapWithTrailing } from '../operators/exhaust-map-with-trailing.js';

/** Least time between two progress writes of one job, by default (ms). */
export const DEFAULT_PROGRESS_INTERVAL_MS = 250;

/**
 * The publish gap of a stored run ({@link ProgressWriterOptions.publishGapMs}), ms: a watcher
 * sees an event at most this much later (the progress row's own interval,
 * {@link DEFAULT_PROGRESS_INTERVAL_MS}); a run delivering ~30 images a second publishes ~0.15
 * statements of notifications per image (~0.6 with a 50 ms gap, ~1.5 without; BENCHMARKS.md
 * 11F, 11G). The job's end does not wait for it.
 */
export const RUN_PUBLISH_GAP_MS = 250;

export interface ProgressWriterOptions {
  /** Least time between two progress writes of one job, in ms. Default 250. */
  readonly intervalMs?: number;
  /**
   * Least time between two publishes of one job's notifications, in ms. Default 0: the next
   * publish starts when the previous one is done. A gap lets the notifications of a busy job
   * go out together: the first at once, those that come within the gap in the next publish
   * (one statement). Once the job's events have ended, the gap is cut short: its last
   * notifications (and `job:finished`) do not wait for it. `runStoredJob` uses {@link RUN_PUBLISH_GAP_MS}.
   */
  readonly publishGapMs?: number;
  /** Clock of the coalescing window. Default `asyncScheduler`; tests pass a virtual one. */
  readonly scheduler?: SchedulerLike;
  /** Writes new attach ids to the job row. Default {@link appendProgress} on `database`. */
  readonly writeProgress?: (jobId: string, attachIds: readonly string[]) => Promise<void>;
  /**
   * Publishes one notification payload (the payloads owed are then published one after
   * another). Default: `notifyEach(database, PROGRESS_CHANNEL, payloads)`, the payloads
   * owed at once.
   */
  readonly publish?: (payload: string) => Promise<void>;
  /**
   * Called with a failed write or publish; the stream then goes on. Without it
   * the failure errors the stream (progress is not optional unless you say so).
   */
  readonly onError?: (error: unknown) => void;
}

/**
 * Persists and publishes job progress as events flow by; the events pass
 * through unchanged.
 *
 * - **Coalesced writes.** Per job, `slot:delivered` attach ids are collected and
 *   written with `throttleTime(intervalMs, { leading, trailing })`: the first
 *   delivery is written at once, then at most one write per `intervalMs`, and
 *   the trailing write always flushes the last state. Each write sends only the
 *   ids new since the previous one, in delivery order; writes of one job never
 *   overlap (`concatMap`).
 * - **One notification per event** on {@link PROGRESS_CHANNEL}, in event order per
 *   job: ids and counts, never images. Notifications that come while the job's last
 *   ones are being published (or within `publishGapMs` after) go out together next, in
 *   order, in one statement (`notifyEach`): one round trip, not one per event. `job:finished` is NOT published here:
 *   `finishJob` publishes it inside its transaction, so watchers see it only once
 *   the final state is committed. The `job:finished` event itself passes only after
 *   every notification of its job is out, so a watcher never sees the end of a job
 *   before its last events.
 * - **Completion.** Completes when the source has completed and every pending
 *   write and notification is done (up to `intervalMs` after the last event).
 *   A job's side effects end after its `job:finished` event.
 * - **Errors.** A source error is passed on at once; ids not yet written are
 *   lost from the progress row until `finishJob` appends every delivered id.
 *
 * ```
 * events:   d1 d2 d3 ------------ d4 |
 * writes:   [d1] ---- [d2,d3] --- ---- [d4]      (intervalMs = 4 frames)
 * ```
 *
 * @example
 * engine.events$.pipe(progressWriter(database)).subscribe();
 */
export function progressWriter(database: Database, options: ProgressWriterOptions = {}): MonoTypeOperatorFunction<PipelineEvent> {
  const intervalMs = options.intervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
  const publishGapMs = options.publishGapMs ?? 0;
  const scheduler = options.scheduler ?? asyncScheduler;
  const write = options.writeProgress ?? ((jobId, ids) => appendProgress(database, jobId, ids));
  const given = options.publish;
  const publishAll = given
    ? async (payloads: readonly string[]) => {
        for (const payload of payloads) await given(payload);
      }
    : (payloads: readonly string[]) => notifyEach(database, PROGRESS_CHANNEL, payloads);
  const guard = <T>(work: Observable<T>): Observable<T> => {
    const onError = options.onError;
    return onError ? work.pipe(catchError((error: unknown) => (onError(error), EMPTY))) : work;
  };

  /** The job's writes and notifications; `notified` completes once every notification of the job is published. */
  const sideEffectsOfJob = (jobId: string, job$: Observable<PipelineEvent>, notified: Subject<void>): Observable<never> => {
    const pending: string[] = [];
    const owed: string[] = [];
    // The job's events have ended (`job:finished`, or the source completed): no gap is kept after that.
    const ended$ = new ReplaySubject<true>(1);
    const notifications$ = job$.pipe(
      tap({ complete: () => ended$.next(true) }),
      map(toNotifiedEvent),
      filter((notified) => notified !== null),
      tap((notified) => owed.push(encodeNotification(notified))),
      // One publish at a time (and the gap after it); everything owed when it ends goes out in the next.
      exhaustMapWithTrailing(() => {
        const publish = defer(() => guard(from(publishAll(owed.splice(0)))));
        return publishGapMs > 0 ? concat(publish, timer(publishGapMs, scheduler).pipe(takeUntil(ended$), ignoreElements())) : publish;
      }),
    );
    const writes$ = job$.pipe(
      filter((event): event is SlotDeliveredEvent => event.type === 'slot:delivered'),
      tap((event) => pending.push(event.attachId)),
      throttleTime(intervalMs, scheduler, { leading: true, trailing: true }),
      concatMap(() =>
        defer(() => {
          // Take everything collected so far: a write queued behind a slow one
          // picks up the ids that arrived meanwhile.
          const batch = pending.splice(0);
          return batch.length === 0 ? EMPTY : guard(from(write(jobId, batch)));
        }),
      ),
    );
    return merge(notifications$.pipe(finalize(() => notified.complete())), writes$).pipe(ignoreElements());
  };

  return (source) =>
    source.pipe(
      // `connect` subscribes both branches before the source starts, so a
      // synchronous source reaches the side effects too.
      connect((events$) => {
        const notifiedByJob = new Map<string, Subject<void>>();
        const notifiedOf = (jobId: string) => {
          let notified = notifiedByJob.get(jobId);
          if (!notified) notifiedByJob.set(jobId, (notified = new Subject<void>()));
          return notified;
        };
        return merge(
          // `job:finished` waits until the job's notifications are out: whoever acts on it
          // (`finishJob` publishes its own) must not overtake the job's last events.
          events$.pipe(
            concatMap((event) =>
              event.type === 'job:finished'
                ? concat(notifiedOf(event.jobId).pipe(ignoreElements()), defer(() => (notifiedByJob.delete(event.jobId), of(event))))
                : of(event),
            ),
          ),
          events$.pipe(
            groupBy((event) => event.jobId),
            mergeMap((group) =>
              sideEffectsOfJob(
                group.key,
                group.pipe(takeWhile((event) => event.type !== 'job:finished', true)),
                notifiedOf(group.key),
              ),
            ),
          ),
        );
      }),
    );
}
