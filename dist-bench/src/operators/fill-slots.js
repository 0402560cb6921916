import { EMPTY, Observable, ReplaySubject, merge, catchError, concat, defer, expand, filter, from, map, mergeMap, of, take, takeUntil, throwError, timeout, timer, } from 'rxjs';
import { PipelineError, toPipelineError } from '../domain/error-class.js';
import { fullJitterBackoff } from './full-jitter-backoff.js';
/**
 * What the stages of one job share: the job-wide halt (an `auth` failure stops every
 * stage), the cancel signal, and the job's progress counter.
 */
export class JobControl {
    jobId;
    total;
    /** Emits (and replays to late subscribers) once the job must stop taking new slots. */
    halted$ = new ReplaySubject(1);
    #haltedBy = null;
    #cancelled = false;
    delivered;
    constructor(jobId, total, alreadyDelivered) {
        this.jobId = jobId;
        this.total = total;
        this.delivered = alreadyDelivered;
    }
    get haltedBy() {
        return this.#haltedBy;
    }
    get cancelled() {
        return this.#cancelled;
    }
    /** Stops every stage from starting new attempts; in-flight attempts finish. */
    halt(errorClass) {
        if (this.#haltedBy !== null)
            return;
        this.#haltedBy = errorClass;
        this.halted$.next();
    }
    /** Marks the job cancelled and stops new attempts in every stage. */
    cancel() {
        this.#cancelled = true;
        this.halt('cancelled');
    }
}
/**
 * Fills one stage's slots: the heart of the engine.
 *
 * Requests exactly the unfilled slots (on resume, attempt numbers continue from the
 * recorded counts). Each request runs `generate -> deliver` under the stage limit
 * and the global limit. A retryable failure becomes a replacement request for the
 * **same slot** after `fullJitterBackoff` (the shortfall loop is an `expand`), while
 * the budget lasts; there is no barrier: other slots and stages never wait for it.
 * A non-retryable failure stops this stage's new requests (in-flight ones finish);
 * `auth` halts the whole job. A slot is filled at most once, so never more than
 * `quantity` deliveries.
 *
 * Errors never end the stream: every failure is caught inside the projection and
 * becomes an `attempt:failed` event. The stream completes after the stage's
 * `stage:completed` or `stage:short` event and its {@link StageResult}.
 *
 * ```
 * quantity 2, slot 1 fails once (retryable), backoff 3:
 * requests   (01)---1'
 * events     s s-fd--s-d-(cR)     s=attempt:started f=failed d=delivered c=stage:completed R=result
 * ```
 */
export function fillSlots(config) {
    return defer(() => {
        const { stage, ports, budget, job, scheduler } = config;
        const jobId = job.jobId;
        const quantity = stage.quantity;
        const attachIds = config.state.map((s) => s.attachId);
        const attemptsUsed = config.state.map((s) => s.attemptsUsed);
        let delivered = attachIds.filter((id) => id !== null).length;
        let replacementsUsed = attemptsUsed.reduce((sum, used, slot) => sum + (attachIds[slot] === null ? Math.max(0, used - 1) : 0), 0);
        let stoppedBy = null;
        let lastErrorClass = null;
        const inFlight = new Map();
        const stageHalt$ = new ReplaySubject(1);
        const halt$ = merge(stageHalt$, job.halted$);
        // Set first thing on teardown: releasing an aborted attempt's permit must not start
        // a queued request of this same, dying stage.
        let closed = false;
        const halted = () => closed || stoppedBy !== null || job.haltedBy !== null;
        const event = (e) => ({ kind: 'event', event: e });
        const requestFor = (slot, attempt) => ({
            kind: 'request',
            request: {
                jobId,
                stageIndex: stage.index,
                slotIndex: slot,
                attempt,
                prompt: stage.prompt,
                aspectRatio: stage.aspectRatio,
                inputAttachId: stage.inputAttachId,
            },
        });
        // Whether a slot may have one more attempt, charging the stage budget if it is a replacement.
        const admit = (slot) => {
            const next = (attemptsUsed[slot] ?? 0) + 1;
            if (next > budget.maxAttemptsPerSlot)
                return false;
            if (next > 1) {
                if (replacementsUsed >= budget.maxReplacementsPerStage)
                    return false;
                replacementsUsed++;
            }
            return true;
        };
        const onOutcome = (request, permit, startedAt, outcome) => {
            inFlight.delete(request.slotIndex);
            const latencyMs = scheduler.now() - startedAt;
            if (outcome.ok) {
                config.globalLimiter.onSuccess();
                if (attachIds[request.slotIndex] !== null)
                    return EMPTY;
                attachIds[request.slotIndex] = outcome.delivery.attachId;
                delivered++;
                job.delivered++;
                const deliveredEvent = {
                    type: 'slot:delivered',
                    jobId,
                    at: scheduler.now(),
                    stage: stage.index,
                    slot: request.slotIndex,
                    attempt: request.attempt,
                    attachId: outcome.delivery.attachId,
                    latencyMs,
                    usage: outcome.image.usage ?? null,
                    stageProgress: { delivered, total: quantity },
                    progress: { delivered: job.delivered, total: job.total },
                };
                return of(event(deliveredEvent));
            }
            const error = outcome.error;
            lastErrorClass = error.errorClass;
            if (error.errorClass === 'rate_limited')
                config.globalLimiter.onRateLimited(permit);
            if (error.errorClass === 'auth')
                job.halt('auth');
            else if (!error.retryable && stoppedBy === null) {
                stoppedBy = error.errorClass;
                stageHalt$.next();
            }
            const willRetry = error.retryable && !halted() && admit(request.slotIndex);
            const delayMs = willRetry ? fullJitterBackoff(request.attempt, error.retryAfterMs, config.random, config.backoff) : 0;
            const failed = {
                type: 'attempt:failed',
                jobId,
                at: scheduler.now(),
                stage: stage.index,
                slot: request.slotIndex,
                attempt: request.attempt,
                errorClass: error.errorClass,
                message: error.message,
                httpStatus: error.httpStatus ?? null,
                latencyMs,
                willRetry,
                delayMs,
            };
            if (!willRetry)
                return of(event(failed));
            const next = requestFor(request.slotIndex, request.attempt + 1);
            return of(event(failed), { kind: 'replace', request: next.request, delayMs });
        };
        // The backoff wait happens outside the permits: a slot waiting to retry holds no
        // concurrency, and only its own slot waits. A halt cancels the wait.
        const afterBackoff = (step) => step.kind === 'replace'
            ? timer(step.delayMs, scheduler).pipe(takeUntil(halt$), map(() => ({ kind: 'request', request: step.request })))
            : of(step);
        const runAttempt = (request) => {
            let started = false;
            const attempt$ = config.stageLimiter.run(() => config.globalLimiter.run((permit) => defer(() => {
                // A request that waited for a permit while the stage stopped is dropped unsent.
                if (halted())
                    return EMPTY;
                started = true;
                const startedAt = scheduler.now();
                attemptsUsed[request.slotIndex] = Math.max(attemptsUsed[request.slotIndex] ?? 0, request.attempt);
                inFlight.set(request.slotIndex, { request, startedAt });
                const startedEvent = {
                    type: 'attempt:started',
                    jobId,
                    at: startedAt,
                    stage: stage.index,
                    slot: request.slotIndex,
                    attempt: request.attempt,
                };
                const work$ = defer(() => ports.generate(request)).pipe(timeout({
                    first: config.attemptTimeoutMs,
                    scheduler,
                    with: () => throwError(() => new PipelineError('timeout', `no image within ${config.attemptTimeoutMs} ms`)),
                }), take(1), mergeMap((image) => defer(() => ports.deliver(request, image)).pipe(take(1), map((delivery) => ({ ok: true, delivery, image })))), 
                // An empty answer from a port is a failure, not a silent gap.
                (source) => new Observable((subscriber) => {
                    let seen = false;
                    return source.subscribe({
                        next: (value) => {
                            seen = true;
                            subscriber.next(value);
                        },
                        error: (error) => subscriber.error(error),
                        complete: () => {
                            if (!seen)
                                subscriber.next({ ok: false, error: new PipelineError('no_image', 'the generator completed without an image') });
                            subscriber.complete();
                        },
                    });
                }), catchError((error) => of({ ok: false, error: toPipelineError(error) })), mergeMap((outcome) => onOutcome(request, permit, startedAt, outcome)));
                return concat(of(event(startedEvent)), work$);
            })));
            // A halt drops requests still queued for a permit, but never one already running.
            return attempt$.pipe(takeUntil(halt$.pipe(filter(() => !started))), mergeMap(afterBackoff));
        };
        const initial = [];
        for (let slot = 0; slot < quantity; slot++) {
            if (attachIds[slot] === null && admit(slot))
                initial.push(requestFor(slot, (attemptsUsed[slot] ?? 0) + 1));
        }
        const work$ = from(initial).pipe(expand((step) => (step.kind === 'request' ? runAttempt(step.request) : EMPTY)), filter((step) => step.kind === 'event'), map((step) => ({ kind: 'event', event: step.event })));
        // Cancellation aborts in-flight attempts; each is reported as a `cancelled` failure
        // before the stage's own work is torn down. Every stage watches cancel$ itself, so
        // each reports its own in-flight attempts.
        const run$ = new Observable((subscriber) => {
            const stopWork$ = new ReplaySubject(1);
            const cancelSubscription = config.cancel$.pipe(take(1)).subscribe({
                next: () => {
                    const now = scheduler.now();
                    for (const { request, startedAt } of inFlight.values()) {
                        subscriber.next({
                            kind: 'event',
                            event: {
                                type: 'attempt:failed',
                                jobId,
                                at: now,
                                stage: stage.index,
                                slot: request.slotIndex,
                                attempt: request.attempt,
                                errorClass: 'cancelled',
                                message: 'the job was cancelled',
                                httpStatus: null,
                                latencyMs: now - startedAt,
                                willRetry: false,
                                delayMs: 0,
                            },
                        });
                    }
                    inFlight.clear();
                    job.cancel();
                    stopWork$.next();
                },
                error: (e) => subscriber.error(e),
            });
            const workSubscription = work$.pipe(takeUntil(stopWork$)).subscribe({
                next: (item) => subscriber.next(item),
                error: (e) => subscriber.error(e),
                complete: () => subscriber.complete(),
            });
            return () => {
                closed = true;
                workSubscription.unsubscribe();
                cancelSubscription.unsubscribe();
            };
        });
        const finish$ = defer(() => {
            const result = {
                index: stage.index,
                quantity,
                delivered,
                attachIds: attachIds.filter((id) => id !== null),
                shortfall: delivered === quantity ? null : shortfallOf(quantity - delivered),
            };
            const now = scheduler.now();
            const last = result.shortfall
                ? {
                    type: 'stage:short',
                    jobId,
                    at: now,
                    stage: stage.index,
                    quantity,
                    delivered,
                    missing: result.shortfall.count,
                    reason: result.shortfall.reason,
                    errorClass: result.shortfall.errorClass,
                }
                : { type: 'stage:completed', jobId, at: now, stage: stage.index, quantity, delivered };
            return from([{ kind: 'event', event: last }, { kind: 'result', result }]);
        });
        function shortfallOf(count) {
            if (job.cancelled)
                return { count, reason: 'cancelled', errorClass: 'cancelled' };
            if (stoppedBy !== null)
                return { count, reason: 'non_retryable', errorClass: stoppedBy };
            if (job.haltedBy !== null) {
                return lastErrorClass === job.haltedBy
                    ? { count, reason: 'non_retryable', errorClass: job.haltedBy }
                    : { count, reason: 'job_aborted', errorClass: job.haltedBy };
            }
            return { count, reason: 'budget_exhausted', errorClass: lastErrorClass };
        }
        return concat(run$, finish$);
    });
}
