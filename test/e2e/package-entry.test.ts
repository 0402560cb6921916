/**
 * The package entry as a host uses it: `import ... from 'imagegen-pipeline'` (the
 * package imports itself by name through package.json "exports", which point at the
 * BUILT `dist/index.js`: run `npm run build` first, as CI does), and the README's
 * library example (test/e2e/readme-example.ts, type-checked by `npm run typecheck`)
 * run on an in-process pipeline: PGlite and the offline generator in a temp data folder.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as lib from 'imagegen-pipeline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as srcConfig from '../../src/config.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { openExamplePipeline, runExampleJob, watchExampleJob } from './readme-example.js';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
const DIST_ENTRY = join(ROOT, 'dist', 'index.js');

/** A one-shot event: `promise` resolves once `fire()` was called. */
function signal(): { promise: Promise<void>; fire(): void } {
  let fire = () => {};
  const promise = new Promise<void>((r) => (fire = r));
  return { promise, fire };
}

async function guarded<T>(promise: Promise<T>, what: string, ms = 60_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`still waiting for ${what} after ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
  }
}

describe('the package entry `imagegen-pipeline`', () => {
  it('resolves to the built dist/index.js, not to src', async () => {
    expect(existsSync(DIST_ENTRY), `${DIST_ENTRY} is missing: run \`npm run build\` first`).toBe(true);
    const byPath = (await import(pathToFileURL(DIST_ENTRY).href)) as typeof lib;
    // The same module instance: the name resolved to this very file.
    expect(lib.loadConfig).toBe(byPath.loadConfig);
    expect(lib.runJob).toBe(byPath.runJob);
    expect(lib.loadConfig).not.toBe(srcConfig.loadConfig);
    expect(import.meta.resolve('imagegen-pipeline')).toBe(pathToFileURL(DIST_ENTRY).href);
  });

  it('serves the HTTP face from its own entry, imagegen-pipeline/http (Fastify loads only for hosts that import it)', async () => {
    const http = (await import('imagegen-pipeline/http')) as { buildServer?: unknown };
    expect(typeof http.buildServer).toBe('function');
    expect(import.meta.resolve('imagegen-pipeline/http')).toBe(pathToFileURL(join(ROOT, 'dist', 'http', 'server.js')).href);
    expect('buildServer' in lib).toBe(false);
  });

  it('exports what the README names', () => {
    for (const name of ['loadConfig', 'openPipeline', 'engineOptionsOf', 'runJob', 'watchJob', 'runEngine', 'grantCredits', 'importInputImage', 'submitSpec']) {
      expect(typeof (lib as Record<string, unknown>)[name], name).toBe('function');
    }
  });
});

describe('the README library example, run through the package entry [pglite, offline]', () => {
  let dir: string;
  let pipeline: lib.Pipeline;
  let inputId: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imagegen-entry-'));
    pipeline = await openExamplePipeline({
      IMAGEGEN_DATA_DIR: join(dir, 'data'),
      IMAGEGEN_LOG_LEVEL: 'silent',
      IMAGEGEN_OFFLINE_LATENCY_MS: '10',
      IMAGEGEN_PROGRESS_INTERVAL_MS: '10',
      // The cached template of a fresh embedded database (same default as the CLI).
      HOME: process.env['HOME'],
      XDG_CACHE_HOME: process.env['XDG_CACHE_HOME'],
    });
    await lib.grantCredits(pipeline.database, 'alice', 5);
    inputId = await lib.importInputImage(pipeline, 'alice', { bytes: await renderStampedPng({ stamp: 3, width: 48, height: 27 }), mimeType: 'image/png', width: 48, height: 27 });
  }, 60_000);

  afterAll(async () => {
    await pipeline?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('the pipeline is the offline one of loadConfig(env), in the temp data folder', () => {
    expect(pipeline.config.provider).toBe('offline');
    expect(pipeline.config.dataDir).toBe(join(dir, 'data'));
    expect(pipeline.database.kind).toBe('pglite');
  });

  it('runJob prints 1/3, 2/3, 3/3 and the finished status with the attach ids; watchJob sees the same, live', async () => {
    // The job must exist before anyone can watch it: submit the README's spec first
    // (the README's runJob then resumes it: same jobId, same spec, no second reservation).
    const spec = { jobId: 'j-1', userId: 'alice', stages: [{ quantity: 3, prompt: 'a cat', mergedImageAttachId: inputId }] };
    await lib.submitSpec(pipeline, lib.parseJobSpec(spec), { pricePerImage: 1 });

    const renders: [number, number][] = [];
    const finishedStatus: string[] = [];
    const snapshotSeen = signal();
    const watchDone = signal();
    const watching = watchExampleJob(
      pipeline,
      (delivered, total) => {
        renders.push([delivered, total]);
        snapshotSeen.fire();
      },
      (status) => {
        finishedStatus.push(status);
        watchDone.fire();
      },
    );
    await guarded(snapshotSeen.promise, 'the watch snapshot');
    expect(renders).toEqual([[0, 3]]);

    const printed: unknown[][] = [];
    const runDone = signal();
    const running = runExampleJob(pipeline, inputId, {
      log: (...args: unknown[]) => {
        printed.push(args);
        if (args.length === 2) runDone.fire();
      },
    });
    await guarded(Promise.all([runDone.promise, watchDone.promise]), 'job:finished from runJob and from watchJob');
    running.unsubscribe();
    watching.unsubscribe();

    const stored = await lib.readJobResult(pipeline.database, 'j-1');
    const attachIds = stored?.result.attachIds ?? [];
    expect(attachIds).toHaveLength(3);
    expect(new Set(attachIds).size).toBe(3);
    expect(printed).toEqual([['1/3'], ['2/3'], ['3/3'], ['completed', attachIds]]);
    expect(renders).toEqual([
      [0, 3],
      [1, 3],
      [2, 3],
      [3, 3],
    ]);
    expect(finishedStatus).toEqual(['completed']);
    // Reserved once (submit), captured once per image: 5 granted - 3.
    expect(await lib.getBalance(pipeline.database, 'alice')).toEqual({ balance: 2, reserved: 0 });
    for (const [slot, id] of attachIds.entries()) {
      expect(await lib.getAttachment(pipeline.database, id)).toMatchObject({ attachId: id, userId: 'alice', contentType: 'image/webp', slot: { jobId: 'j-1', stageIndex: 0, slotIndex: slot } });
    }
  }, 60_000);
});
