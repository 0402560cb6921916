import { Observable, ReplaySubject, take, takeUntil, type MonoTypeOperatorFunction } from 'rxjs';

export interface UntilCancelledConfig<T> {
  /** Emits to cancel; only its first value counts. An error is passed on. */
  readonly cancel$: Observable<unknown>;
  /**
   * Runs on cancel, while the source is still subscribed: it may `emit` (a stage reports
   * its in-flight attempts) and must do what has to happen before the source is torn
   * down (a stage halts the job, so that no permit the teardown frees starts new work).
   */
  readonly onCancel: (emit: (value: T) => void) => void;
  /** Runs first thing on any teardown (cancel, unsubscribe, completion), before the source's own. */
  readonly onClose: () => void;
}

/**
 * Mirrors the source until `cancel$` emits; then lets `onCancel` emit and act, and only
 * then unsubscribes the source and completes. A cancel already signalled at
 * subscription means the source is never subscribed. (`takeUntil` alone would tear the
 * source down before anything could be said about it.)
 *
 * ```
 * source   --a--b--c--
 * cancel$  -------x
 * result   --a--b-(y|)      y = what onCancel emits
 * ```
 */
export function untilCancelled<T>(config: UntilCancelledConfig<T>): MonoTypeOperatorFunction<T> {
  return (source) =>
    new Observable<T>((subscriber) => {
      const stop$ = new ReplaySubject<void>(1);
      const cancelSubscription = config.cancel$.pipe(take(1)).subscribe({
        next: () => {
          config.onCancel((value) => subscriber.next(value));
          stop$.next();
        },
        error: (e: unknown) => subscriber.error(e),
      });
      // Not subscribe(subscriber): that would hang the source's teardown on the
      // subscriber, ahead of onClose.
      const sourceSubscription = source.pipe(takeUntil(stop$)).subscribe({
        next: (value) => subscriber.next(value),
        error: (e: unknown) => subscriber.error(e),
        complete: () => subscriber.complete(),
      });
      return () => {
        config.onClose();
        sourceSubscription.unsubscribe();
        cancelSubscription.unsubscribe();
      };
    });
}
