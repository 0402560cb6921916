/**
 * `loadConfig` (src/config.ts) to `runEngine`: the engine settings of the configuration
 * (`engineOptionsOf`) and the defaults the configuration leaves to the engine.
 *
 * Unit tests, no I/O: the environment is an object passed in; the engine runs on
 * scripted ports.
 */
import { lastValueFrom, throwError, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { PipelineError } from '../src/domain/error-class.js';
import type { PipelineEvent } from '../src/domain/events.js';
import { parseJobSpec } from '../src/domain/job-spec.js';
import type { AttemptRequest, EnginePorts } from '../src/domain/ports.js';
import { engineOptionsOf } from '../src/pipeline.js';
import { DEFAULT_ENGINE_OPTIONS, runEngine } from '../src/streams/engine.js';

type Env = Record<string, string | undefined>;

describe('IMAGEGEN_CONCURRENCY vs IMAGEGEN_STAGE_CONCURRENCY', () => {
  it.each([
    ['1', 1],
    ['3', 3],
    ['4', 4],
    ['8', 4],
    ['1000', 4],
  ])('IMAGEGEN_CONCURRENCY=%s: the stage default is min(4, global) = %i', (global, stage) => {
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: global }).engine).toMatchObject({ globalConcurrency: Number(global), stageConcurrency: stage });
  });

  it('an explicit IMAGEGEN_STAGE_CONCURRENCY is taken as given', () => {
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '2', IMAGEGEN_STAGE_CONCURRENCY: '6' }).engine).toMatchObject({ globalConcurrency: 2, stageConcurrency: 6 });
    expect(loadConfig({ IMAGEGEN_CONCURRENCY: '16', IMAGEGEN_STAGE_CONCURRENCY: '1' }).engine).toMatchObject({ globalConcurrency: 16, stageConcurrency: 1 });
  });

  it('engineOptionsOf passes the stage concurrency to the engine', () => {
    expect(engineOptionsOf(loadConfig({ IMAGEGEN_CONCURRENCY: '2' })).stageConcurrency).toBe(2);
  });
});

describe('IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE unset: the engine uses max(10, quantity)', () => {
  /**
   * Runs a one-stage job of `quantity` through `runEngine` with the engine options the
   * configuration `env` gives, every attempt failing `overloaded` (retryable), no
   * backoff and a per-slot budget that never binds: the attempts made are exactly
   * quantity + the stage's replacement budget.
   */
  async function attemptsMade(env: Env, quantity: number): Promise<{ calls: number; events: PipelineEvent[] }> {
    const config = loadConfig({ IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '100', IMAGEGEN_BACKOFF_BASE_MS: '0', IMAGEGEN_BACKOFF_MAX_MS: '0', ...env });
    const stages = parseJobSpec({ userId: 'u', stages: [{ quantity, prompt: 'p', mergedImageAttachId: 'in' }] }).stages;
    let calls = 0;
    const ports: EnginePorts = {
      generate: (_request: AttemptRequest) => {
        calls++;
        return throwError(() => new PipelineError('overloaded', 'scripted 503'));
      },
      deliver: () => throwError(() => new Error('nothing is ever generated')),
    };
    const events = await lastValueFrom(runEngine({ jobId: 'j', stages }, ports, { ...engineOptionsOf(config), random: () => 0 }).pipe(toArray()));
    return { calls, events };
  }

  it('the default lives in the engine (DEFAULT_ENGINE_OPTIONS), and the config leaves it to the engine', () => {
    expect(loadConfig({}).engine.maxReplacementsPerStage).toBeUndefined();
    expect('maxReplacementsPerStage' in engineOptionsOf(loadConfig({}))).toBe(false);
    const byQuantity = DEFAULT_ENGINE_OPTIONS.maxReplacementsPerStage;
    expect([1, 3, 10, 11, 25, 1000].map((q) => byQuantity(q))).toEqual([10, 10, 10, 11, 25, 1000]);
  });

  it.each([
    [3, 10],
    [10, 10],
    [25, 25],
  ])('quantity %i: %i replacements, then the stage ends short with budget_exhausted', async (quantity, replacements) => {
    const { calls, events } = await attemptsMade({}, quantity);
    expect(calls).toBe(quantity + replacements);
    expect(events.filter((e) => e.type === 'attempt:failed')).toHaveLength(quantity + replacements);
    const short = events.find((e) => e.type === 'stage:short');
    expect(short).toMatchObject({ missing: quantity, reason: 'budget_exhausted', errorClass: 'overloaded' });
    expect(events.at(-1)).toMatchObject({ type: 'job:finished', status: 'failed' });
  });

  it('a set value replaces the default (0 included)', async () => {
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '2' }, 3)).calls).toBe(5);
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '0' }, 3)).calls).toBe(3);
    expect((await attemptsMade({ IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '40' }, 25)).calls).toBe(65);
  });
});
