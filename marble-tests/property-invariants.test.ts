import fc from 'fast-check';
import { defer, finalize, of, type Observable } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { PipelineError, isRetryable, type ErrorClass } from '../src/domain/error-class.js';
import type { JobFinishedEvent, PipelineEvent } from '../src/domain/events.js';
import type { EnginePorts, GeneratedImage } from '../src/domain/ports.js';
import { seededRandom } from '../src/domain/random.js';
import { runEngine } from '../src/streams/engine.js';
import { IMAGE, key, newScheduler, stages } from './support.js';

const CLASSES: ErrorClass[] = ['rate_limited', 'overloaded', 'timeout', 'network', 'no_image', 'safety_blocked', 'corrupt_image', 'storage', 'prompt_blocked', 'invalid_request', 'auth'];
const RETRYABLE_CLASSES = CLASSES.filter(isRetryable);

interface Scenario {
  readonly seed: number;
  readonly quantities: number[];
  readonly failureRate: number;
  readonly classes: ErrorClass[];
  readonly hangRate: number;
  readonly stageConcurrency: number;
  readonly globalConcurrency: number;
  readonly maxAttemptsPerSlot: number;
  /** Safety blocks in a row that end a stage (`safety_blocked`); default the engine's. */
  readonly maxSafetyBlocksPerStage?: number;
  readonly maxReplacementsPerStage: number;
}

interface Observed {
  events: PipelineEvent[];
  calls: string[];
  maxInFlightPerStage: number[];
  maxInFlight: number;
  overlappingSlot: boolean;
}

/** Runs a scenario in virtual time: each attempt's fate (latency, failure, hang) comes from the seed. */
function runScenario(s: Scenario): Observed {
  const scheduler = newScheduler();
  const observed: Observed = { events: [], calls: [], maxInFlightPerStage: s.quantities.map(() => 0), maxInFlight: 0, overlappingSlot: false };
  const fate = seededRandom(s.seed);
  scheduler.run((helpers) => {
    const inFlightPerStage = s.quantities.map(() => 0);
    const slotsInFlight = new Set<string>();
    let inFlight = 0;
    const ports: EnginePorts = {
      generate: (r) =>
        defer(() => {
          observed.calls.push(key(r));
          const slot = `${r.stageIndex}.${r.slotIndex}`;
          if (slotsInFlight.has(slot)) observed.overlappingSlot = true;
          slotsInFlight.add(slot);
          inFlight++;
          inFlightPerStage[r.stageIndex]!++;
          observed.maxInFlight = Math.max(observed.maxInFlight, inFlight);
          observed.maxInFlightPerStage[r.stageIndex] = Math.max(observed.maxInFlightPerStage[r.stageIndex]!, inFlightPerStage[r.stageIndex]!);
          const latency = '-'.repeat(1 + Math.floor(fate() * 4));
          const roll = fate();
          const cls = s.classes[Math.floor(fate() * s.classes.length)] ?? 'overloaded';
          const source: Observable<GeneratedImage> =
            roll < s.hangRate
              ? helpers.cold<GeneratedImage>('-')
              : roll < s.hangRate + s.failureRate
                ? helpers.cold<GeneratedImage>(`${latency}#`, undefined, new PipelineError(cls, 'injected', { retryAfterMs: cls === 'rate_limited' ? 7 : undefined }))
                : helpers.cold(`${latency}i|`, { i: IMAGE });
          return source.pipe(
            finalize(() => {
              slotsInFlight.delete(slot);
              inFlight--;
              inFlightPerStage[r.stageIndex]!--;
            }),
          );
        }),
      deliver: (r) => of({ attachId: `a${r.stageIndex}-${r.slotIndex}`, duplicate: false }),
    };
    scheduler.schedule(() =>
      runEngine({ jobId: 'p', stages: stages(...s.quantities) }, ports, {
        scheduler,
        random: seededRandom(s.seed ^ 0x5bd1e995),
        backoff: { baseMs: 4, multiplier: 2, maxMs: 40 },
        attemptTimeoutMs: 20,
        stageConcurrency: s.stageConcurrency,
        globalConcurrency: s.globalConcurrency,
        maxAttemptsPerSlot: s.maxAttemptsPerSlot,
        maxReplacementsPerStage: s.maxReplacementsPerStage,
        ...(s.maxSafetyBlocksPerStage !== undefined ? { maxSafetyBlocksPerStage: s.maxSafetyBlocksPerStage } : {}),
      }).subscribe((e) => observed.events.push(e)),
    );
  });
  return observed;
}

/** Every invariant of the engine, checked on one run. */
function checkInvariants(s: Scenario, o: Observed): void {
  const { events, calls } = o;
  expect(events[0]?.type).toBe('job:started');
  expect(events.filter((e) => e.type === 'job:finished')).toHaveLength(1);
  const finished = events.at(-1) as JobFinishedEvent;
  expect(finished.type).toBe('job:finished');

  // a slot is filled at most once; never more than q deliveries per stage
  const delivered = events.flatMap((e) => (e.type === 'slot:delivered' ? [e] : []));
  const filled = new Set(delivered.map((e) => `${e.stage}.${e.slot}`));
  expect(filled.size).toBe(delivered.length);
  s.quantities.forEach((q, stage) => expect(delivered.filter((e) => e.stage === stage).length).toBeLessThanOrEqual(q));

  // progress is monotone, one step per delivery
  expect(delivered.map((e) => e.progress.delivered)).toEqual(delivered.map((_, i) => i + 1));

  // never a call for a slot after it was filled, never two attempts of one slot at once
  expect(o.overlappingSlot).toBe(false);
  for (const e of delivered) expect(calls.filter((c) => c.startsWith(`${e.stage}.${e.slot}#`)).at(-1)).toBe(`${e.stage}.${e.slot}#${e.attempt}`);

  // budgets and limits
  for (const c of calls) expect(Number(c.split('#')[1])).toBeLessThanOrEqual(s.maxAttemptsPerSlot);
  s.quantities.forEach((_, stage) => {
    const replacements = calls.filter((c) => c.startsWith(`${stage}.`) && !c.endsWith('#1')).length;
    expect(replacements).toBeLessThanOrEqual(s.maxReplacementsPerStage);
    expect(o.maxInFlightPerStage[stage]).toBeLessThanOrEqual(s.stageConcurrency);
  });
  expect(o.maxInFlight).toBeLessThanOrEqual(s.globalConcurrency);

  // a non-retryable failure stops new attempts of that stage (auth: of every stage)
  const starts = events.filter((e) => e.type === 'attempt:started');
  for (const f of events) {
    if (f.type !== 'attempt:failed' || isRetryable(f.errorClass)) continue;
    const after = starts.filter((e) => e.at > f.at && (f.errorClass === 'auth' || e.stage === f.stage));
    expect(after).toEqual([]);
  }

  // the result: exact or honest, ordered by stage then slot
  const result = finished.result;
  result.stages.forEach((st, i) => {
    const q = s.quantities[i]!;
    const mine = delivered.filter((e) => e.stage === i).sort((a, b) => a.slot - b.slot);
    expect(st.attachIds).toEqual(mine.map((e) => e.attachId));
    expect(st.delivered).toBe(mine.length);
    if (st.delivered === q) expect(st.shortfall).toBeNull();
    else expect(st.shortfall?.count).toBe(q - st.delivered);
  });
  expect(result.attachIds).toEqual(result.stages.flatMap((st) => st.attachIds));
  const allFull = result.stages.every((st, i) => st.delivered === s.quantities[i]);
  expect(result.status === 'completed').toBe(allFull);
  if (!allFull) expect(result.status).toBe(result.deliveredImages > 0 ? 'partial' : 'failed');
}

const scenario = fc.record({
  seed: fc.integer(),
  quantities: fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 4 }),
  failureRate: fc.double({ min: 0, max: 0.7, noNaN: true }),
  classes: fc.subarray(CLASSES, { minLength: 1 }),
  hangRate: fc.double({ min: 0, max: 0.1, noNaN: true }),
  stageConcurrency: fc.integer({ min: 1, max: 6 }),
  globalConcurrency: fc.integer({ min: 1, max: 10 }),
  maxAttemptsPerSlot: fc.integer({ min: 1, max: 6 }),
  maxReplacementsPerStage: fc.integer({ min: 0, max: 30 }),
});

describe('property: the invariants hold under random failure schedules', () => {
  it('exact-or-honest count, fill-once, monotone progress, budgets, limits, order (300 schedules)', () => {
    fc.assert(
      fc.property(scenario, (s) => {
        checkInvariants(s, runScenario(s));
      }),
      { numRuns: 300 },
    );
  });

  it('a generator failing 20% of the time (retryable classes) ends with exactly q deliveries per stage', () => {
    fc.assert(
      fc.property(fc.integer(), fc.integer({ min: 1, max: 60 }), (seed, q) => {
        const s: Scenario = {
          seed,
          quantities: [q, Math.ceil(q / 2)],
          failureRate: 0.2,
          classes: RETRYABLE_CLASSES,
          hangRate: 0,
          stageConcurrency: 4,
          globalConcurrency: 6,
          maxAttemptsPerSlot: 10,
          // generous enough that running out is practically impossible (p < 1e-6 per stage)
          maxReplacementsPerStage: q * 2 + 10,
          // safety_blocked is retryable, but 3 in a row end a stage (issue 15; its own marble
          // test): at 20% failures over a few classes that happens (seed 553984719, q 15).
          maxSafetyBlocksPerStage: 1_000,
        };
        const o = runScenario(s);
        checkInvariants(s, o);
        const finished = o.events.at(-1) as JobFinishedEvent;
        expect(finished.result.stages.map((st) => st.delivered)).toEqual(s.quantities);
        expect(finished.status).toBe('completed');
      }),
      // The schedule that found three safety blocks in a row, always checked.
      { numRuns: 200, examples: [[553984719, 15]] },
    );
  });

  it('a generator that always answers prompt_blocked gets exactly one call per in-flight slot; the stage ends short', () => {
    fc.assert(
      fc.property(fc.integer(), fc.integer({ min: 1, max: 40 }), fc.integer({ min: 1, max: 8 }), (seed, q, stageConcurrency) => {
        const s: Scenario = {
          seed,
          quantities: [q],
          failureRate: 1,
          classes: ['prompt_blocked'],
          hangRate: 0,
          stageConcurrency,
          globalConcurrency: 100,
          maxAttemptsPerSlot: 5,
          maxReplacementsPerStage: 100,
        };
        const o = runScenario(s);
        checkInvariants(s, o);
        expect(o.calls).toHaveLength(Math.min(q, stageConcurrency));
        const finished = o.events.at(-1) as JobFinishedEvent;
        expect(finished.result.stages[0]?.shortfall).toEqual({ count: q, reason: 'non_retryable', errorClass: 'prompt_blocked' });
        expect(finished.status).toBe('failed');
      }),
      { numRuns: 100 },
    );
  });
});
