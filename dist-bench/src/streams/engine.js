import { AsyncSubject, NEVER, Observable, asyncScheduler, concat, defer, filter, map, merge, mergeMap, of, take, tap, toArray, } from 'rxjs';
import { seededRandom } from '../domain/random.js';
import { freshStageState } from '../domain/resume-state.js';
import { jobStatusOf } from '../domain/result.js';
import { AdaptiveConcurrencyLimiter } from '../operators/adaptive-concurrency-limiter.js';
import { ConcurrencyLimiter } from '../operators/concurrency-limiter.js';
import { JobControl, fillSlots } from '../operators/fill-slots.js';
import { DEFAULT_BACKOFF } from '../operators/full-jitter-backoff.js';
export const DEFAULT_ENGINE_OPTIONS = Object.freeze({
    stageConcurrency: 4,
    globalConcurrency: 8,
    maxAttemptsPerSlot: 5,
    maxReplacementsPerStage: (quantity) => Math.max(10, quantity),
    attemptTimeoutMs: 120_000,
    backoff: DEFAULT_BACKOFF,
});
/**
 * Runs a job: every stage concurrently, each filling exactly its slots, and emits
 * typed events ending with exactly one `job:finished` that carries the
 * {@link JobResult}.
 *
 * Stages start together (stage 2's first request is not delayed by stage 1) and
 * share the global limit. Their results are merged with `concat` in stage order
 * (then slot order) even when a later stage finishes first: the stage streams run
 * eagerly and `concat` only reads their final results.
 *
 * The Observable is cold: each subscription runs the job once. Unsubscribing aborts
 * in-flight attempts; use `cancel$` to end with a `cancelled` result instead.
 *
 * ```
 * stage 0  ──s──d──s──d──|
 * stage 1  ──s──d|
 * events   S─ss─dd─s──d──(CF)      F = job:finished, attach ids [stage 0..., stage 1...]
 * ```
 *
 * @example
 * runEngine({ jobId: 'j1', stages }, { generate, deliver }, { stageConcurrency: 4 })
 *   .subscribe((event) => console.log(event.type));
 */
export function runEngine(job, ports, options = {}) {
    return defer(() => {
        const scheduler = options.scheduler ?? asyncScheduler;
        const random = options.random ?? seededRandom(Date.now());
        const stageConcurrency = options.stageConcurrency ?? DEFAULT_ENGINE_OPTIONS.stageConcurrency;
        const globalLimiter = options.globalLimiter ?? new AdaptiveConcurrencyLimiter({ max: options.globalConcurrency ?? DEFAULT_ENGINE_OPTIONS.globalConcurrency });
        const replacements = options.maxReplacementsPerStage ?? DEFAULT_ENGINE_OPTIONS.maxReplacementsPerStage;
        const states = job.stages.map((stage, i) => job.state?.[i] ?? freshStageState(stage.quantity));
        states.forEach((state, i) => {
            if (state.length !== job.stages[i].quantity) {
                throw new RangeError(`resume state of stage ${i} has ${state.length} slots, the stage has quantity ${job.stages[i].quantity}`);
            }
        });
        const total = job.stages.reduce((sum, s) => sum + s.quantity, 0);
        const already = states.reduce((sum, state) => sum + state.filter((s) => s.attachId !== null).length, 0);
        const control = new JobControl(job.jobId, total, already);
        const cancel$ = options.cancel$ ?? NEVER;
        const started = {
            type: 'job:started',
            jobId: job.jobId,
            at: scheduler.now(),
            totalImages: total,
            deliveredImages: already,
            stages: job.stages.map((s, i) => ({
                index: s.index,
                quantity: s.quantity,
                delivered: states[i].filter((slot) => slot.attachId !== null).length,
            })),
        };
        // Each stage's result lands in its own AsyncSubject; `concat` reads them in stage order.
        const results = job.stages.map(() => new AsyncSubject());
        const stageRuns = job.stages.map((stage, i) => fillSlots({
            stage,
            state: states[i],
            ports,
            budget: {
                maxAttemptsPerSlot: options.maxAttemptsPerSlot ?? DEFAULT_ENGINE_OPTIONS.maxAttemptsPerSlot,
                maxReplacementsPerStage: typeof replacements === 'function' ? replacements(stage.quantity) : replacements,
            },
            backoff: options.backoff ?? DEFAULT_ENGINE_OPTIONS.backoff,
            attemptTimeoutMs: options.attemptTimeoutMs ?? DEFAULT_ENGINE_OPTIONS.attemptTimeoutMs,
            stageLimiter: new ConcurrencyLimiter(stageConcurrency),
            globalLimiter,
            job: control,
            cancel$,
            scheduler,
            random,
        }).pipe(tap((item) => {
            if (item.kind === 'result') {
                results[i].next(item.result);
                results[i].complete();
            }
        }), filter((item) => item.kind === 'event'), map((item) => item.event)));
        const finished$ = concat(...results).pipe(toArray(), mergeMap((stages) => {
            const attachIds = stages.flatMap((s) => s.attachIds);
            const result = {
                jobId: job.jobId,
                status: jobStatusOf(stages, control.cancelled),
                totalImages: total,
                deliveredImages: attachIds.length,
                attachIds,
                stages,
            };
            const finished = {
                type: 'job:finished',
                jobId: job.jobId,
                at: scheduler.now(),
                status: result.status,
                attachIds,
                result,
            };
            return of(finished);
        }));
        const run$ = concat(of(started), merge(...stageRuns), finished$);
        const stop$ = options.stop$;
        if (!stop$)
            return run$;
        return new Observable((subscriber) => {
            const stopSubscription = stop$.pipe(take(1)).subscribe(() => control.halt('cancelled'));
            const runSubscription = run$.subscribe(subscriber);
            return () => {
                runSubscription.unsubscribe();
                stopSubscription.unsubscribe();
            };
        });
    });
}
