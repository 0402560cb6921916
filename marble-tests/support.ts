import { of, type Observable } from 'rxjs';
import { TestScheduler, type RunHelpers } from 'rxjs/testing';
import type { SubscriptionLog } from 'rxjs/internal/testing/SubscriptionLog';
import { expect } from 'vitest';
import { PipelineError, type ErrorClass } from '../src/domain/error-class.js';
import type { PipelineEvent } from '../src/domain/events.js';
import { parseJobSpec, type StageSpec } from '../src/domain/job-spec.js';
import type { AttemptRequest, Delivery, EnginePorts, GeneratedImage } from '../src/domain/ports.js';
import type { StageState } from '../src/domain/resume-state.js';
import { runEngine, type EngineOptions } from '../src/streams/engine.js';

export const IMAGE: GeneratedImage = { bytes: new Uint8Array([1, 2, 3]), mimeType: 'image/png' };

export function newScheduler(): TestScheduler {
  return new TestScheduler((actual, expected) => expect(actual).toEqual(expected));
}

/** Stages with the given quantities (prompt and input are irrelevant to the engine). */
export function stages(...quantities: number[]): StageSpec[] {
  return [
    ...parseJobSpec({
      userId: 'u1',
      stages: quantities.map((quantity) => ({ quantity, prompt: 'p', mergedImageAttachId: 'in' })),
    }).stages,
  ];
}

/** One line per event, short enough to read in a marble values table. */
export function compact(e: PipelineEvent): string {
  switch (e.type) {
    case 'job:started':
      return `job:started ${e.deliveredImages}/${e.totalImages}`;
    case 'attempt:started':
      return `start ${e.stage}.${e.slot}#${e.attempt}`;
    case 'attempt:failed':
      return `fail ${e.stage}.${e.slot}#${e.attempt} ${e.errorClass}${e.willRetry ? ` retry+${e.delayMs}` : ''}`;
    case 'slot:delivered':
      return `deliver ${e.stage}.${e.slot}#${e.attempt} ${e.attachId} ${e.progress.delivered}/${e.progress.total}`;
    case 'stage:completed':
      return `stage ${e.stage} completed ${e.delivered}/${e.quantity}`;
    case 'stage:short':
      return `stage ${e.stage} short ${e.missing} ${e.reason} ${e.errorClass}`;
    case 'job:finished':
      return `job ${e.status} [${e.attachIds.join(',')}]`;
  }
}

export const key = (r: Pick<AttemptRequest, 'stageIndex' | 'slotIndex' | 'attempt'>) => `${r.stageIndex}.${r.slotIndex}#${r.attempt}`;

/** A scripted generator answer: a cold marble where `i` is the image, and the error `#` throws. */
export interface Script {
  readonly marble: string;
  readonly error?: ErrorClass;
  readonly retryAfterMs?: number;
}

/**
 * Ports whose `generate` answers are cold marbles chosen per attempt, recording each
 * call and the cold's subscriptions so tests can assert *when* a request was made.
 */
export function scriptedPorts(
  helpers: RunHelpers,
  script: (request: AttemptRequest) => Script,
  deliver: (request: AttemptRequest) => Observable<Delivery> = (r) => of({ attachId: `a${r.stageIndex}${r.slotIndex}`, duplicate: false }),
) {
  const calls: string[] = [];
  const colds = new Map<string, ReturnType<RunHelpers['cold']>>();
  const ports: EnginePorts = {
    generate: (request) => {
      calls.push(key(request));
      const s = script(request);
      const error = s.error ? new PipelineError(s.error, `scripted ${s.error}`, { retryAfterMs: s.retryAfterMs }) : undefined;
      const cold = helpers.cold(s.marble, { i: IMAGE }, error);
      colds.set(key(request), cold);
      return cold;
    },
    deliver,
  };
  return { ports, calls, subscriptions: (k: string) => colds.get(k)?.subscriptions ?? [] };
}

/**
 * Subscribes (inside `TestScheduler.run`) and records `"<frame> <event>"` lines, the
 * output of a run in virtual time. Read the array after `run` returns.
 */
export function timeline(scheduler: TestScheduler, events$: Observable<PipelineEvent>): string[] {
  const lines: string[] = [];
  scheduler.schedule(() => {
    events$.subscribe({
      next: (e) => lines.push(`${scheduler.now()} ${compact(e)}`),
      error: (e: unknown) => lines.push(`${scheduler.now()} ERROR ${String(e)}`),
      complete: () => lines.push(`${scheduler.now()} |`),
    });
  });
  return lines;
}

/** Engine options for virtual time: jitter fixed at 0.5, backoff base 10 frames. */
export function virtualOptions(scheduler: TestScheduler) {
  return {
    scheduler,
    random: () => 0.5,
    backoff: { baseMs: 10, multiplier: 2, maxMs: 1000 },
    attemptTimeoutMs: 1000,
    stageConcurrency: 10,
    globalConcurrency: 100,
  } as const;
}

/** One engine run in virtual time, described by its stages, script and options. */
export interface Simulation {
  readonly quantities: readonly number[];
  readonly script: (request: AttemptRequest) => Script;
  readonly deliver?: (request: AttemptRequest) => Observable<Delivery>;
  readonly state?: readonly StageState[];
  /** Engine options; `virtualOptions(scheduler)` when omitted. */
  readonly options?: (scheduler: TestScheduler, helpers: RunHelpers) => EngineOptions;
  /** The job's spend cap and what earlier runs spent (`EngineJob.maxCostUsd`, `spentUsd`). */
  readonly job?: { readonly maxCostUsd?: number; readonly spentUsd?: number };
  /** Assertions that must run inside `TestScheduler.run`, after the run (subscription timing). */
  readonly inside?: (helpers: RunHelpers, subscriptions: (key: string) => SubscriptionLog[]) => void;
}

/** Runs a {@link Simulation}; returns the event timeline and the generator calls in order. */
export function simulate(sim: Simulation): { lines: string[]; calls: string[] } {
  const scheduler = newScheduler();
  let lines: string[] = [];
  let calls: string[] = [];
  scheduler.run((helpers) => {
    const scripted = scriptedPorts(helpers, sim.script, sim.deliver);
    calls = scripted.calls;
    const options = sim.options ? sim.options(scheduler, helpers) : virtualOptions(scheduler);
    lines = timeline(scheduler, runEngine({ jobId: 'j', stages: stages(...sim.quantities), state: sim.state, ...sim.job }, scripted.ports, options));
    if (sim.inside) {
      helpers.flush();
      sim.inside(helpers, scripted.subscriptions);
    }
  });
  return { lines, calls };
}
