import { firstValueFrom, VirtualTimeScheduler } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { OfflineBatchGenerator, OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { PipelineError } from '../../src/domain/error-class.js';
import { batchRequestKey, type BatchRequest, type BatchStatus, type GenerationRequest } from '../../src/domain/ports.js';

function attempts(count: number): BatchRequest[] {
  return Array.from({ length: count }, (_, slotIndex) => {
    const request: GenerationRequest = {
      jobId: 'job-o',
      stageIndex: 1,
      slotIndex,
      attempt: 1,
      prompt: 'a red kite over dunes',
      aspectRatio: '1:1',
      inputAttachId: null,
      input: null,
    };
    return { key: batchRequestKey(request), request };
  });
}

/** Moves the virtual clock forward by `ms` (what `now()` reads). */
function advance(clock: VirtualTimeScheduler, ms: number): void {
  clock.schedule(() => undefined, ms);
  clock.flush();
}

/** A batch's outcome in comparable form: per key, the image bytes (hex) or the error class. */
function outcomes(status: BatchStatus): Record<string, string> {
  return Object.fromEntries((status.responses ?? []).map((r) => [r.key, 'image' in r ? Buffer.from(r.image.bytes).toString('hex') : `error:${r.error.errorClass}`]));
}

async function runBatch(seed: number, requests: readonly BatchRequest[]): Promise<{ status: BatchStatus; generator: OfflineImageGenerator }> {
  const clock = new VirtualTimeScheduler();
  const generator = new OfflineImageGenerator({ seed, failureRate: 0.3, size: 32 });
  const batches = new OfflineBatchGenerator(generator, { completeAfterMs: 1000, scheduler: clock });
  const name = await firstValueFrom(batches.createBatch('job-o/round-1', requests));
  expect((await firstValueFrom(batches.getBatch(name))).state).toBe('running');
  advance(clock, 1000);
  return { status: await firstValueFrom(batches.getBatch(name)), generator };
}

describe('OfflineBatchGenerator', () => {
  it('runs until completeAfterMs, then succeeds with each request answered as the offline generator plans it', async () => {
    const requests = attempts(20);
    const { status, generator } = await runBatch(11, requests);

    expect(status.state).toBe('succeeded');
    expect(status.responses?.map((r) => r.key)).toEqual(requests.map((r) => r.key));
    const planned = requests.map((r) => generator.plannedFailure(r.request));
    expect(planned.some((p) => p !== null)).toBe(true); // the seed injects failures: the check below is not vacuous
    for (const [index, response] of (status.responses ?? []).entries()) {
      const failure = planned[index];
      if (failure === null) {
        if (!('image' in response)) throw new Error(`expected an image for ${response.key}`);
        expect(response.image.mimeType).toBe('image/png');
      } else {
        if (!('error' in response)) throw new Error(`expected ${failure} for ${response.key}`);
        expect(response.error).toBeInstanceOf(PipelineError);
        expect(response.error.errorClass).toBe(failure);
      }
    }
  });

  it('is deterministic for a seed: same images and failures; another seed differs', async () => {
    const requests = attempts(12);
    const first = outcomes((await runBatch(5, requests)).status);
    const again = outcomes((await runBatch(5, requests)).status);
    const other = outcomes((await runBatch(6, requests)).status);
    expect(again).toEqual(first);
    expect(other).not.toEqual(first);
  });

  it('finds a batch by displayName, cancels a running one, and says an unknown one (an earlier process\'s) failed whole', async () => {
    const clock = new VirtualTimeScheduler();
    const batches = new OfflineBatchGenerator(new OfflineImageGenerator({ size: 32 }), { completeAfterMs: 500, scheduler: clock });
    const name = await firstValueFrom(batches.createBatch('job-o/round-2', attempts(2)));
    expect(await firstValueFrom(batches.findBatch('job-o/round-2'))).toBe(name);
    expect(await firstValueFrom(batches.findBatch('job-o/round-9'))).toBeNull();

    await firstValueFrom(batches.cancelBatch(name), { defaultValue: undefined });
    advance(clock, 500);
    const status = await firstValueFrom(batches.getBatch(name));
    expect(status.state).toBe('cancelled');
    expect(status.responses).toBeUndefined();

    const unknown = await firstValueFrom(batches.getBatch('batches/offline-99'));
    expect(unknown).toMatchObject({ name: 'batches/offline-99', state: 'failed' });
    expect(unknown.error).toMatch(/earlier run/);
  });
});
