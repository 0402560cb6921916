import sharp from 'sharp';
import { firstValueFrom, lastValueFrom, toArray, VirtualTimeScheduler } from 'rxjs';
import { TestScheduler } from 'rxjs/testing';
import { describe, expect, it } from 'vitest';
import { ASPECT_RATIOS, aspectRatioParts } from '../../src/domain/aspect-ratio.js';
import { PipelineError, type ErrorClass } from '../../src/domain/error-class.js';
import type { GenerationRequest } from '../../src/domain/ports.js';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';

function request(overrides: Partial<GenerationRequest> = {}): GenerationRequest {
  return {
    jobId: 'job-1',
    stageIndex: 0,
    slotIndex: 0,
    attempt: 1,
    prompt: 'a red fox in snow',
    aspectRatio: '16:9',
    inputAttachId: null,
    input: null,
    ...overrides,
  };
}

async function outcome(gen: OfflineImageGenerator, req: GenerationRequest): Promise<ErrorClass | 'ok'> {
  return firstValueFrom(gen.generate(req)).then(
    () => 'ok' as const,
    (e: unknown) => {
      expect(e).toBeInstanceOf(PipelineError);
      return (e as PipelineError).errorClass;
    },
  );
}

describe('OfflineImageGenerator', () => {
  it.each(ASPECT_RATIOS)('returns a decodable PNG of aspect ratio %s, long side = size', async (aspectRatio) => {
    const image = await firstValueFrom(new OfflineImageGenerator({ size: 300 }).generate(request({ aspectRatio })));
    expect(image.mimeType).toBe('image/png');
    const meta = await sharp(image.bytes).metadata();
    expect(meta.format).toBe('png');
    const [w, h] = aspectRatioParts(aspectRatio);
    expect(Math.max(meta.width ?? 0, meta.height ?? 0)).toBe(300);
    // Within 2%: the short side is a whole number of pixels (8:1 at 300 px is 300 x 38).
    expect(Math.abs((meta.width ?? 0) / (meta.height ?? 1) - w / h) / (w / h)).toBeLessThan(0.02);
  });

  it('derives the image from the input image (cropped to the requested ratio)', async () => {
    const input = await sharp({ create: { width: 200, height: 200, channels: 3, background: { r: 255, g: 255, b: 255 } } }).png().toBuffer();
    const black = await sharp({ create: { width: 200, height: 200, channels: 3, background: { r: 0, g: 0, b: 0 } } }).png().toBuffer();
    const gen = new OfflineImageGenerator({ size: 128 });
    const fromWhite = await firstValueFrom(gen.generate(request({ aspectRatio: '9:16', input: { bytes: input, mimeType: 'image/png' } })));
    const fromBlack = await firstValueFrom(gen.generate(request({ aspectRatio: '9:16', input: { bytes: black, mimeType: 'image/png' } })));
    expect(await sharp(fromWhite.bytes).metadata()).toMatchObject({ width: 72, height: 128 });
    const mean = async (bytes: Uint8Array) => (await sharp(bytes).stats()).channels.reduce((s, c) => s + c.mean, 0);
    expect(await mean(fromWhite.bytes)).toBeGreaterThan(await mean(fromBlack.bytes));
  });

  it('is deterministic per (job, stage, slot, attempt) and differs between attempts', async () => {
    const a = new OfflineImageGenerator({ seed: 5, size: 96 });
    const b = new OfflineImageGenerator({ seed: 5, size: 96 });
    const first = await firstValueFrom(a.generate(request()));
    const again = await firstValueFrom(b.generate(request()));
    expect(Buffer.from(first.bytes).equals(Buffer.from(again.bytes))).toBe(true);
    for (const change of [{ attempt: 2 }, { slotIndex: 1 }, { stageIndex: 1 }, { jobId: 'job-2' }, { prompt: 'a blue whale' }]) {
      const other = await firstValueFrom(a.generate(request(change)));
      expect(Buffer.from(other.bytes).equals(Buffer.from(first.bytes)), JSON.stringify(change)).toBe(false);
    }
  });

  it('an undecodable input image -> invalid_request (not retryable)', async () => {
    const gen = new OfflineImageGenerator();
    const error = await firstValueFrom(gen.generate(request({ input: { bytes: new TextEncoder().encode('nope'), mimeType: 'image/png' } }))).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(PipelineError);
    expect((error as PipelineError).errorClass).toBe('invalid_request');
    expect((error as PipelineError).retryable).toBe(false);
  });

  describe('fault injection', () => {
    const slots = Array.from({ length: 200 }, (_, i) => request({ slotIndex: i }));

    it('fails about failureRate of attempts, only with the configured classes, reproducibly', async () => {
      const classes: ErrorClass[] = ['overloaded', 'rate_limited'];
      const gen = new OfflineImageGenerator({ failureRate: 0.3, failureClasses: classes, seed: 11, size: 32 });
      const results = await Promise.all(slots.map((s) => outcome(gen, s)));
      const failures = results.filter((r) => r !== 'ok');
      expect(failures.length).toBeGreaterThan(35);
      expect(failures.length).toBeLessThan(85);
      expect(new Set(failures)).toEqual(new Set(classes));
      // Same seed, same plan; the plan says exactly what happened.
      const twin = new OfflineImageGenerator({ failureRate: 0.3, failureClasses: classes, seed: 11, size: 32 });
      expect(slots.map((s) => twin.plannedFailure(s) ?? 'ok')).toEqual(results);
      // Another seed, another plan.
      const other = new OfflineImageGenerator({ failureRate: 0.3, failureClasses: classes, seed: 12 });
      expect(slots.map((s) => other.plannedFailure(s) ?? 'ok')).not.toEqual(results);
    });

    it('a failed attempt can succeed on the next attempt number', () => {
      const gen = new OfflineImageGenerator({ failureRate: 0.5, seed: 3 });
      const failedFirst = slots.filter((s) => gen.plannedFailure(s) !== null);
      expect(failedFirst.length).toBeGreaterThan(0);
      expect(failedFirst.some((s) => gen.plannedFailure({ ...s, attempt: 2 }) === null)).toBe(true);
    });

    it('failureRate 0 never fails and 1 always fails', async () => {
      const never = new OfflineImageGenerator({ failureRate: 0, size: 32 });
      const always = new OfflineImageGenerator({ failureRate: 1, failureClasses: ['timeout'] });
      expect(slots.every((s) => never.plannedFailure(s) === null)).toBe(true);
      expect(slots.every((s) => always.plannedFailure(s) === 'timeout')).toBe(true);
      expect(await outcome(always, request())).toBe('timeout');
    });

    it('injected rate_limited failures carry retryAfterMs', async () => {
      const gen = new OfflineImageGenerator({ failureRate: 1, failureClasses: ['rate_limited'], rateLimitRetryAfterMs: 750 });
      const error = (await firstValueFrom(gen.generate(request())).catch((e: unknown) => e)) as PipelineError;
      expect(error).toMatchObject({ errorClass: 'rate_limited', retryAfterMs: 750 });
    });

    it('rejects a failureRate outside 0..1', () => {
      expect(() => new OfflineImageGenerator({ failureRate: 1.5 })).toThrow(RangeError);
      expect(() => new OfflineImageGenerator({ failureRate: 0.5, failureClasses: [] })).toThrow(RangeError);
    });
  });

  describe('latency on the injected scheduler', () => {
    it('an injected failure arrives after latency + seeded jitter, in virtual time', () => {
      // Compare errors by class: the message names the attempt and is not part of the contract.
      const byClass = (frames: unknown) =>
        (frames as { frame: number; notification: { kind: string; error?: unknown } }[]).map(({ frame, notification }) => ({
          frame,
          kind: notification.kind,
          errorClass: (notification.error as PipelineError | undefined)?.errorClass,
        }));
      const scheduler = new TestScheduler((actual, expected) => expect(byClass(actual)).toEqual(byClass(expected)));
      scheduler.run(({ expectObservable }) => {
        const gen = new OfflineImageGenerator({ latencyMs: 100, jitterMs: 50, failureRate: 1, failureClasses: ['overloaded'], seed: 1, scheduler });
        const req = request();
        const latency = gen.plannedLatencyMs(req);
        expect(latency).toBeGreaterThanOrEqual(100);
        expect(latency).toBeLessThan(150);
        const error = new PipelineError('overloaded', 'x');
        expectObservable(gen.generate(req)).toBe(`${latency}ms #`, undefined, error);
      });
    });

    it('jitter varies between attempts but is stable for one attempt', () => {
      const gen = new OfflineImageGenerator({ latencyMs: 10, jitterMs: 1000, seed: 9 });
      const latencies = Array.from({ length: 20 }, (_, i) => gen.plannedLatencyMs(request({ attempt: i + 1 })));
      expect(new Set(latencies).size).toBeGreaterThan(10);
      expect(gen.plannedLatencyMs(request({ attempt: 1 }))).toBe(latencies[0]);
    });

    it('unsubscribing before the latency elapses produces nothing', async () => {
      // Virtual time: "before the latency elapses" is frame 100 of 200, whatever the machine's speed.
      const scheduler = new VirtualTimeScheduler();
      const gen = new OfflineImageGenerator({ latencyMs: 200, scheduler });
      const seen: unknown[] = [];
      const sub = gen.generate(request()).subscribe({ next: (v) => seen.push(v), error: (e: unknown) => seen.push(e) });
      // A twin request that stays subscribed: once it has its image, the unsubscribed one would have had its own.
      const twin = firstValueFrom(gen.generate(request()));
      scheduler.maxFrames = 100;
      scheduler.flush();
      sub.unsubscribe();
      scheduler.maxFrames = Number.POSITIVE_INFINITY;
      scheduler.flush();
      expect((await twin).bytes.byteLength).toBeGreaterThan(0);
      expect(seen).toEqual([]);
    });

    it('emits exactly one image and completes', async () => {
      const all = await lastValueFrom(new OfflineImageGenerator({ size: 32 }).generate(request()).pipe(toArray()));
      expect(all).toHaveLength(1);
    });
  });
});
