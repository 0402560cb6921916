import { asyncScheduler, catchError, concatMap, connect, defer, EMPTY, filter, from, groupBy, ignoreElements, merge, mergeMap, takeWhile, tap, throttleTime, } from 'rxjs';
import { encodeNotification, PROGRESS_CHANNEL, toNotifiedEvent } from '../db/notifications.js';
import { appendProgress } from '../db/ops/append-progress.js';
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
 *   job: ids and counts, never images. `job:finished` is NOT published here:
 *   `finishJob` publishes it inside its transaction, so watchers see it only once
 *   the final state is committed.
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
export function progressWriter(database, options = {}) {
    const intervalMs = options.intervalMs ?? 250;
    const scheduler = options.scheduler ?? asyncScheduler;
    const write = options.writeProgress ?? ((jobId, ids) => appendProgress(database, jobId, ids));
    const publish = options.publish ?? ((payload) => database.notify(PROGRESS_CHANNEL, payload));
    const guard = (work) => {
        const onError = options.onError;
        return onError ? work.pipe(catchError((error) => (onError(error), EMPTY))) : work;
    };
    const sideEffectsOfJob = (jobId, job$) => {
        const pending = [];
        const notifications$ = job$.pipe(concatMap((event) => {
            const notified = toNotifiedEvent(event);
            return notified === null ? EMPTY : guard(defer(() => from(publish(encodeNotification(notified)))));
        }));
        const writes$ = job$.pipe(filter((event) => event.type === 'slot:delivered'), tap((event) => pending.push(event.attachId)), throttleTime(intervalMs, scheduler, { leading: true, trailing: true }), concatMap(() => defer(() => {
            // Take everything collected so far: a write queued behind a slow one
            // picks up the ids that arrived meanwhile.
            const batch = pending.splice(0);
            return batch.length === 0 ? EMPTY : guard(from(write(jobId, batch)));
        })));
        return merge(notifications$, writes$).pipe(ignoreElements());
    };
    return (source) => source.pipe(
    // `connect` subscribes both branches before the source starts, so a
    // synchronous source reaches the side effects too.
    connect((events$) => merge(events$, events$.pipe(groupBy((event) => event.jobId), mergeMap((group) => sideEffectsOfJob(group.key, group.pipe(takeWhile((event) => event.type !== 'job:finished', true))))))));
}
