import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defer, firstValueFrom, lastValueFrom, Subject, tap, toArray } from 'rxjs';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobStateError } from '../../src/db/errors.js';
import { finishJob } from '../../src/db/ops/finish-job.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { jobStats } from '../../src/db/ops/job-stats.js';
import { JobLeasedError } from '../../src/db/errors.js';
import { claimJobLease } from '../../src/db/ops/job-lease.js';
import { readJobResult } from '../../src/db/ops/read-job-result.js';
import { replayLedger } from '../../src/db/ops/replay-ledger.js';
import type { JobFinishedEvent, PipelineEvent } from '../../src/domain/events.js';
import { endedResult } from '../../src/domain/result.js';
import { parseJobSpec } from '../../src/domain/job-spec.js';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { OfflineImageGenerator } from '../../src/adapters/offline-image-generator.js';
import { AdaptiveConcurrencyLimiter } from '../../src/engine/adaptive-concurrency-limiter.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import type { ObjectStore } from '../../src/sinks/object-store.js';
import { runStoredJob, type RunJobDeps } from '../../src/streams/run-job.js';
import { importInputImage, submitSpec } from '../../src/jobs/submit-job.js';
import { randomMixBehavior, startFakeGeminiServer } from '../support/fake-gemini-server.js';
import { readStamp } from '../support/stamped-image.js';
import { forEachDatabase, TEST_PGLITE_TEMPLATE_DIR } from '../support/databases.js';

const FAST = { backoff: { baseMs: 5, maxMs: 50 }, progressIntervalMs: 20, cancelPollMs: 50, stageConcurrency: 4 } as const;

forEachDatabase('runStoredJob end to end (generator -> sharp -> storage -> delivery transaction)', (ctx) => {
  let root: string;
  let store: FolderObjectStore;
  let inputId: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-run-'));
    store = new FolderObjectStore({ root });
    const png = new Uint8Array(await sharp({ create: { width: 96, height: 64, channels: 3, background: '#3060a0' } }).png().toBuffer());
    inputId = await importInputImage({ database: ctx.database, store }, 'u1', { bytes: png, mimeType: 'image/png', width: 96, height: 64 });
    await grantCredits(ctx.database, 'u1', 1000);
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const submit = async (jobId: string, quantities: number[]) => {
    const spec = parseJobSpec({ jobId, userId: 'u1', stages: quantities.map((quantity, i) => ({ quantity, prompt: `p${i}`, mergedImageAttachId: inputId })) });
    return submitSpec({ database: ctx.database, store }, spec, { pricePerImage: 1 });
  };
  const objectsOf = async (jobId: string) => firstValueFrom(store.list(`generated/${jobId}/`));

  it('delivers exactly the asked images with the offline generator failing 30% of the time', async () => {
    await submit('off-1', [7, 5]);
    const deps: RunJobDeps = { database: ctx.database, store, generator: new OfflineImageGenerator({ failureRate: 0.3, seed: 7 }) };
    const events = await lastValueFrom(runStoredJob(deps, 'off-1', { ...FAST, maxAttemptsPerSlot: 12 }).pipe(toArray()));
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.type).toBe('job:finished');
    expect(finished.status).toBe('completed');
    expect(finished.result.stages.map((s) => s.attachIds.length)).toEqual([7, 5]);
    expect(events.some((e) => e.type === 'attempt:failed' && e.willRetry)).toBe(true);
    const stored = await readJobResult(ctx.database, 'off-1');
    expect(stored?.result.attachIds).toEqual(finished.attachIds);
    expect(stored?.credits).toEqual({ reserved: 12, captured: 12, released: 0 });
    expect((await objectsOf('off-1')).length).toBe(12);
    const stats = await jobStats(ctx.database, { jobId: 'off-1' });
    expect(stats.delivered).toBe(12);
    expect(stats.attempts).toBe(12 + stats.failed);
  });

  it('through the real Gemini SDK against the fake server with mixed faults: exact, every image distinct', async () => {
    const server = await startFakeGeminiServer({
      apiKey: 'k',
      behavior: randomMixBehavior({ seed: 3, failureRate: 0.3, classes: ['status:503', 'status:500', 'no_candidates', 'drop', { status: 429, retryDelay: '0.01s' }] }),
    });
    try {
      await submit('gem-1', [6, 6]);
      const generator = new GeminiImageGenerator({ apiKey: 'k', baseUrl: server.url, timeoutMs: 5000 });
      const deps: RunJobDeps = { database: ctx.database, store, generator, limiter: new AdaptiveConcurrencyLimiter({ max: 6 }) };
      const events = await lastValueFrom(runStoredJob(deps, 'gem-1', { ...FAST, maxAttemptsPerSlot: 12 }).pipe(toArray()));
      const finished = events.at(-1) as JobFinishedEvent;
      expect(finished.status).toBe('completed');
      const keys = await objectsOf('gem-1');
      expect(keys.length).toBe(12);
      const stamps = await Promise.all(keys.map(async (k) => readStamp(await firstValueFrom(store.get(k)))));
      expect(new Set(stamps).size).toBe(12);
      expect(events.filter((e) => e.type === 'attempt:failed').length).toBeGreaterThan(0);
    } finally {
      await server.close();
    }
  });

  it('resumes after an interrupted run: no slot filled twice, no second reservation, orphans removed', async () => {
    await submit('res-1', [8]);
    const balanceAfterSubmit = await getBalance(ctx.database, 'u1');
    const generator = new OfflineImageGenerator({ latencyMs: 30, seed: 1 });
    const deps: RunJobDeps = { database: ctx.database, store, generator };
    // First run: stop taking new slots after the third delivery and abort the rest at once.
    const stop$ = new Subject<void>();
    let delivered = 0;
    const first = await lastValueFrom(
      runStoredJob(deps, 'res-1', { ...FAST, stageConcurrency: 2, stop$, graceMs: 0 }).pipe(
        tap((e: PipelineEvent) => {
          if (e.type === 'slot:delivered' && ++delivered === 3) stop$.next();
        }),
        toArray(),
      ),
    );
    expect(first.some((e) => e.type === 'job:finished')).toBe(false);
    const midway = await readJobResult(ctx.database, 'res-1');
    expect(midway?.rowStatus).toBe('queued');
    const before = midway?.result.deliveredImages ?? 0;
    expect(before).toBeGreaterThanOrEqual(3);
    expect(before).toBeLessThan(8);
    // A crashed attempt's upload that never committed.
    await firstValueFrom(store.put('generated/res-1/0/7-9.webp', new Uint8Array([1, 2, 3]), 'image/webp'), { defaultValue: undefined });

    const events = await lastValueFrom(runStoredJob(deps, 'res-1', FAST).pipe(toArray()));
    const finished = events.at(-1) as JobFinishedEvent;
    expect(finished.status).toBe('completed');
    expect(events[0]).toMatchObject({ type: 'job:started', deliveredImages: before });
    expect(events.filter((e) => e.type === 'slot:delivered').length).toBe(8 - before);
    expect(new Set(finished.attachIds).size).toBe(8);
    expect((await objectsOf('res-1')).sort()).not.toContain('generated/res-1/0/7-9.webp');
    expect((await objectsOf('res-1')).length).toBe(8);
    const stored = await readJobResult(ctx.database, 'res-1');
    expect(stored?.credits).toEqual({ reserved: 8, captured: 8, released: 0 });
    const balance = await getBalance(ctx.database, 'u1');
    expect(balance.balance).toBe(balanceAfterSubmit.balance);
    expect(await replayLedger(ctx.database, 'u1')).toEqual(balance);
  });

  it('refuses a second runner while the lease is held, and replays a finished job without calls', async () => {
    await submit('lease-1', [2]);
    await claimJobLease(ctx.database, 'lease-1', 'other-host:1:x', 60_000);
    const generator = new OfflineImageGenerator({ seed: 2 });
    const deps: RunJobDeps = { database: ctx.database, store, generator };
    await expect(lastValueFrom(runStoredJob(deps, 'lease-1', FAST))).rejects.toBeInstanceOf(JobLeasedError);
    // A job this test finishes itself, then runs again: only its job:finished, no provider call.
    await submit('lease-done', [2]);
    const first = await lastValueFrom(runStoredJob(deps, 'lease-done', FAST).pipe(toArray()));
    expect((first.at(-1) as JobFinishedEvent).status).toBe('completed');
    let calls = 0;
    const counting = { generate: (request: Parameters<OfflineImageGenerator['generate']>[0]) => (calls++, generator.generate(request)) };
    const replayed = await lastValueFrom(runStoredJob({ ...deps, generator: counting }, 'lease-done', FAST).pipe(toArray()));
    expect(replayed.map((e) => e.type)).toEqual(['job:finished']);
    expect((replayed[0] as JobFinishedEvent).status).toBe('completed');
    expect((replayed[0] as JobFinishedEvent).attachIds).toEqual((first.at(-1) as JobFinishedEvent).attachIds);
    expect(calls).toBe(0);
  });

  it('a run that fails after claiming the lease, before its engine starts (beginRun finds the job ended meanwhile), gives the lease back at once', async () => {
    await submit('lease-rel', [2]);
    // The store's first listing (the start sweep, right after the lease is claimed) waits until
    // the test has ended the job another way: `beginRun` then refuses it.
    let listing!: () => void;
    const listed = new Promise<void>((r) => (listing = r));
    let endJob!: () => void;
    const jobEnded = new Promise<void>((r) => (endJob = r));
    let lists = 0;
    const gated: ObjectStore = {
      put: (key, body, type) => store.put(key, body, type),
      get: (key) => store.get(key),
      exists: (key) => store.exists(key),
      delete: (key) => store.delete(key),
      list: (prefix) =>
        ++lists > 1
          ? store.list(prefix)
          : defer(async () => {
              listing();
              await jobEnded;
              return firstValueFrom(store.list(prefix));
            }),
    };
    let calls = 0;
    const offline = new OfflineImageGenerator({ seed: 6 });
    const generator = { generate: (request: Parameters<OfflineImageGenerator['generate']>[0]) => (calls++, offline.generate(request)) };
    const outcome = lastValueFrom(runStoredJob({ database: ctx.database, store: gated, generator }, 'lease-rel', FAST)).then(
      () => new Error('the run did not fail'),
      (error: unknown) => error,
    );
    await listed;
    // The run holds the lease now: another runner is refused.
    await expect(claimJobLease(ctx.database, 'lease-rel', 'someone-else:1:x', 60_000)).rejects.toBeInstanceOf(JobLeasedError);
    const cancelled = { ...endedResult('lease-rel', [{ index: 0, quantity: 2, attachIds: [] }], { reason: 'cancelled', errorClass: null }), status: 'cancelled' as const };
    await finishJob(ctx.database, 'lease-rel', cancelled);
    endJob();
    const error = await outcome;
    expect(error).toBeInstanceOf(JobStateError);
    expect((error as Error).message).toBe('job lease-rel: cannot run a job that is cancelled');
    expect(calls).toBe(0);
    // Released when the run failed, not when its 30 s lease expires: another runner gets it at once.
    await expect(claimJobLease(ctx.database, 'lease-rel', 'someone-else:1:x', 60_000)).resolves.toBeUndefined();
    expect((await readJobResult(ctx.database, 'lease-rel'))?.rowStatus).toBe('cancelled');
  });

  it('a job cancelled while queued ends cancelled at once with no provider call, releasing its whole reservation', async () => {
    await submit('can-0', [3]);
    const { requestCancel } = await import('../../src/db/ops/request-cancel.js');
    expect(await requestCancel(ctx.database, 'can-0')).toBe(true);
    let calls = 0;
    const offline = new OfflineImageGenerator({ seed: 5 });
    const generator = { generate: (request: Parameters<OfflineImageGenerator['generate']>[0]) => (calls++, offline.generate(request)) };
    const events = await lastValueFrom(runStoredJob({ database: ctx.database, store, generator }, 'can-0', FAST).pipe(toArray()));
    expect((events.at(-1) as JobFinishedEvent).status).toBe('cancelled');
    expect(calls).toBe(0);
    expect((await readJobResult(ctx.database, 'can-0'))?.credits).toEqual({ reserved: 3, captured: 0, released: 3 });
  });

  it(
    ctx.kind === 'postgres'
      ? 'a cancel request from another connection (a second database handle, as another process has) ends the job cancelled and releases the rest'
      : 'a cancel request through the database (PGlite: the same in-process handle, since an in-memory PGlite has one session) ends the job cancelled and releases the rest',
    async () => {
      await submit('can-1', [6]);
      const generator = new OfflineImageGenerator({ latencyMs: 200, seed: 4 });
      const deps: RunJobDeps = { database: ctx.database, store, generator };
      const { requestCancel } = await import('../../src/db/ops/request-cancel.js');
      const { openDatabase } = await import('../../src/db/database.js');
      // PostgreSQL: a Database of its own (its own pool and sessions), sharing nothing with the runner but the server.
      const other = ctx.kind === 'postgres' ? await openDatabase(ctx.config) : ctx.database;
      let cancels: Promise<boolean>[] = [];
      let events: PipelineEvent[];
      try {
        events = await lastValueFrom(
          runStoredJob(deps, 'can-1', { ...FAST, stageConcurrency: 1 }).pipe(
            tap((e) => {
              if (e.type === 'slot:delivered' && cancels.length === 0) cancels = [requestCancel(other, 'can-1')];
            }),
            toArray(),
          ),
        );
        expect(await Promise.all(cancels)).toEqual([true]);
      } finally {
        await Promise.allSettled(cancels);
        if (other !== ctx.database) await other.close();
      }
      const finished = events.at(-1) as JobFinishedEvent;
      expect(finished.status).toBe('cancelled');
      const stored = await readJobResult(ctx.database, 'can-1');
      expect(stored?.rowStatus).toBe('cancelled');
      const captured = stored?.credits.captured ?? -1;
      expect(captured).toBe(finished.result.deliveredImages);
      expect(captured).toBeLessThan(6);
      expect(stored?.credits.released).toBe(6 - captured);
      expect((await objectsOf('can-1')).length).toBe(captured);
    },
  );
});

describe('input image is read once per stage', () => {
  it('shares one storage read between all attempts of a stage', async () => {
    const root = await mkdtemp(join(tmpdir(), 'imagegen-once-'));
    const { openDatabase } = await import('../../src/db/database.js');
    const database = await openDatabase({ pgliteTemplateDir: TEST_PGLITE_TEMPLATE_DIR });
    try {
      const base = new FolderObjectStore({ root });
      let gets = 0;
      const store: ObjectStore = {
        put: (key, body, type) => base.put(key, body, type),
        get: (key) => {
          if (key.startsWith('inputs/')) gets++;
          return base.get(key);
        },
        exists: (key) => base.exists(key),
        delete: (key) => base.delete(key),
        list: (prefix) => base.list(prefix),
      };
      const png = new Uint8Array(await sharp({ create: { width: 32, height: 32, channels: 3, background: '#808080' } }).png().toBuffer());
      const inputId = await importInputImage({ database, store }, 'u', { bytes: png, mimeType: 'image/png', width: 32, height: 32 });
      await grantCredits(database, 'u', 100);
      const spec = parseJobSpec({ jobId: 'once', userId: 'u', stages: [{ quantity: 6, prompt: 'p', inputAttachId: inputId }, { quantity: 3, prompt: 'q', inputAttachId: inputId }] });
      await submitSpec({ database, store }, spec, { pricePerImage: 1 });
      const generator = new OfflineImageGenerator({ failureRate: 0.3, seed: 9 });
      const events = await lastValueFrom(runStoredJob({ database, store, generator }, 'once', { ...FAST, maxAttemptsPerSlot: 12 }).pipe(toArray()));
      expect((events.at(-1) as JobFinishedEvent).status).toBe('completed');
      expect(events.filter((e) => e.type === 'attempt:started').length).toBeGreaterThan(9);
      expect(gets).toBe(2);
    } finally {
      await database.close();
      await rm(root, { recursive: true, force: true });
    }
  });
});
