import { defer, EMPTY, exhaustMap, from, of, repeat, tap, type Observable, type ObservableInput, type OperatorFunction } from 'rxjs';

/**
 * `exhaustMap` that loses nothing: values that arrive while the inner runs are not
 * dropped but coalesced, and once the inner completes `project` runs once more, with
 * the latest of them. Inners never overlap; however many values come during one inner,
 * at most one more inner follows it.
 *
 * Made for "something changed, go and look" signals: a look that starts after a change
 * sees it, so one look after the current one covers every change signalled during it
 * (plain `exhaustMap` would miss a change signalled just after the look read; `concatMap`
 * would pile up one look per signal).
 *
 * - **Order**: inners run one after another; each starts with the latest value owed.
 * - **Completion**: once the source has completed and no inner runs or is owed.
 * - **Errors**: a source or inner error is passed on at once (a `project` that throws
 *   errors the stream the same way).
 *
 * ```
 * source:  -a-b-c--------d---|
 * inner:   each v -> ----V|
 * output:  -----A----C-------D|
 *           a runs 1-6; b and c come meanwhile: only c runs, 6-11; d runs 14-19
 * ```
 *
 * @example
 * changed$.pipe(exhaustMapWithTrailing(() => readWhatIsNew$));
 */
export function exhaustMapWithTrailing<T, R>(project: (value: T) => ObservableInput<R>): OperatorFunction<T, R> {
  return (source) =>
    defer(() => {
      // The latest value not yet handed to `project`, boxed: `undefined` may be a value.
      let owed: { readonly value: T } | null = null;
      const runOwed = (): Observable<R> => {
        const next = owed;
        owed = null;
        return next === null ? EMPTY : from(project(next.value));
      };
      return source.pipe(
        tap((value) => (owed = { value })),
        // Only a value that finds no inner running starts one; the ones that come during it
        // are owed, and `repeat` runs the inner again while one is (a delay that completes
        // without a value ends the repeat).
        exhaustMap(() => defer(runOwed).pipe(repeat({ delay: () => (owed === null ? EMPTY : of(null)) }))),
      );
    });
}
