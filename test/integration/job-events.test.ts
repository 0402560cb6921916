/**
 * The job event log as a real run writes it: a stored job run by the engine (offline
 * generator failing 30% of the time, retries) while a follower on another connection
 * (another process, as the `serve` process is) follows its log from the start.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastValueFrom, toArray } from 'rxjs';
import sharp from 'sharp';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { grantCredits, readJobEvents, type Database, type JobEventEnvelope } from '../../src/db/index.js';
import type { AttemptFailedEvent, JobFinishedEvent, SlotDeliveredEvent } from '../../src/domain/events.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { followJobEvents } from '../../src/sources/job-events.js';
import { runStoredJob } from '../../src/streams/run-job.js';
import { forEachDatabase, withSecondConnection } from '../support/databases.js';

const FAST = { backoff: { baseMs: 5, maxMs: 50 }, progressIntervalMs: 20, cancelPollMs: 50, stageConcurrency: 4, maxAttemptsPerSlot: 12 } as const;

forEachDatabase('job event log of a real run', (ctx) => {
  let root: string;
  let store: FolderObjectStore;
  let inputId: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-events-'));
    store = new FolderObjectStore({ root });
    const png = new Uint8Array(await sharp({ create: { width: 96, height: 64, channels: 3, background: '#3060a0' } }).png().toBuffer());
    inputId = await importInputImage({ database: ctx.database, store }, 'u-ev', { bytes: png, mimeType: 'image/png', width: 96, height: 64 });
    await grantCredits(ctx.database, 'u-ev', 1000);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const withReader = <T>(fn: (reader: Database) => Promise<T>): Promise<T> => withSecondConnection(ctx, fn);

  it('a follower from the start gets one slot:delivered per image, one attempt:failed per failure, the stage ends, then job:finished, in seq order', async () => {
    const jobId = 'ev-run-1';
    const spec = parseJobSpec({ jobId, userId: 'u-ev', stages: [5, 3].map((quantity, i) => ({ quantity, prompt: `p${i}`, mergedImageAttachId: inputId })) });
    await submitSpec({ database: ctx.database, store }, spec, { pricePerImage: 1 });
    await withReader(async (reader) => {
      const followed = lastValueFrom(followJobEvents(reader, jobId).pipe(toArray()));
      const deps = { database: ctx.database, store, generator: new OfflineImageGenerator({ failureRate: 0.3, seed: 7 }) };
      const events = await lastValueFrom(runStoredJob(deps, jobId, FAST).pipe(toArray()));
      const log: JobEventEnvelope[] = await followed;

      expect(log).toEqual(await readJobEvents(ctx.database, jobId, { limit: 10_000 }));
      expect(log.map((e) => e.seq)).toEqual(log.map((_, i) => i + 1));
      const finished = events.at(-1) as JobFinishedEvent;
      expect(finished.status).toBe('completed');

      const logged = log.map((e) => e.event);
      const delivered = events.filter((e): e is SlotDeliveredEvent => e.type === 'slot:delivered');
      expect(logged.filter((e) => e.type === 'slot:delivered').map((e) => e.attachId).sort()).toEqual(delivered.map((e) => e.attachId).sort());
      expect(logged.filter((e) => e.type === 'slot:delivered')).toHaveLength(8);
      const failures = events.filter((e): e is AttemptFailedEvent => e.type === 'attempt:failed');
      expect(failures.length).toBeGreaterThan(0);
      const key = (e: { stage: number; slot: number; attempt: number }) => `${e.stage}.${e.slot}#${e.attempt}`;
      expect(logged.filter((e) => e.type === 'attempt:failed').map(key).sort()).toEqual(failures.map(key).sort());
      expect(logged.slice(-3)).toEqual([
        { type: 'stage:completed', jobId, stage: 0, quantity: 5, delivered: 5 },
        { type: 'stage:completed', jobId, stage: 1, quantity: 3, delivered: 3 },
        { type: 'job:finished', jobId, status: 'completed', result: { totalImages: 8, deliveredImages: 8 } },
      ]);
    });
  });
});
