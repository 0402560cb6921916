/**
 * The project's own programs give their helper threads Linux's SCHED_BATCH (src/cli/helper-threads.ts):
 * - `batchHelperThreads` over a made-up task folder: the main thread is left alone, a thread
 *   that is batch already is not asked for, each thread is asked for once, an ended thread's id
 *   is forgotten (ids are reused);
 * - in this process (Linux): after a sweep with the real `chrt`, every thread but the main one
 *   is SCHED_BATCH, the main one is not;
 * - `imagegen run` (a real child process, its provider calls held): while it runs, every thread
 *   of the process but the main one is SCHED_BATCH; with `IMAGEGEN_HELPER_THREADS=normal`, none is.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { batchHelperThreads, policyOf, SCHED_BATCH } from '../src/cli/helper-threads.js';
import { geminiCliEnv, killLiveCliProcesses, startCli } from './support/cli.js';
import { startFakeGeminiServer } from './support/fake-gemini-server.js';
import { renderStampedPng } from './support/stamped-image.js';

const SCHED_OTHER = 0;

/** A `stat` line as Linux writes it (52 fields), with `policy` as its 41st; the name holds a space and a parenthesis. */
const statLine = (threadId: number, policy: number) =>
  `${threadId} (node (x) y) S ${Array.from({ length: 49 }, (_, i) => (i === 38 - 1 ? String(policy) : '0')).join(' ')}\n`;

async function makeTask(root: string, threadId: number, policy: number): Promise<void> {
  await mkdir(join(root, String(threadId)), { recursive: true });
  await writeFile(join(root, String(threadId), 'stat'), statLine(threadId, policy));
}

describe('batchHelperThreads over a task folder', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-tasks-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('asks for every thread but the main one, once, skipping those batch already; a reused id is asked for again', async () => {
    await makeTask(root, 100, SCHED_OTHER);
    await makeTask(root, 101, SCHED_OTHER);
    await makeTask(root, 102, SCHED_BATCH);
    await makeTask(root, 103, SCHED_OTHER);
    expect(policyOf(root, 101)).toBe(SCHED_OTHER);
    expect(policyOf(root, 102)).toBe(SCHED_BATCH);
    expect(policyOf(root, 999)).toBeUndefined();
    const asked: number[][] = [];
    const threads = batchHelperThreads({ taskDir: root, mainThreadId: 100, intervalMs: 0, setBatch: (ids) => asked.push([...ids]) });
    expect(threads).toBeDefined();
    expect(asked).toEqual([[101, 103]]); // the first sweep runs at once
    expect(threads!.sweep()).toEqual([]); // asked already
    await rm(join(root, '101'), { recursive: true });
    await makeTask(root, 104, SCHED_OTHER);
    expect(threads!.sweep()).toEqual([104]);
    await makeTask(root, 101, SCHED_OTHER); // a new thread with an ended one's id
    expect(threads!.sweep()).toEqual([101]);
    expect(asked).toEqual([[101, 103], [104], [101]]);
    threads!.stop();
  });

  it('does nothing where the task folder cannot be listed', () => {
    const asked: number[][] = [];
    expect(batchHelperThreads({ taskDir: join(root, 'missing'), intervalMs: 0, setBatch: (ids) => asked.push([...ids]) })).toBeUndefined();
    expect(asked).toEqual([]);
  });
});

/** The policies of a process's threads, by thread id. */
function policies(pid: number | 'self'): Map<number, number | undefined> {
  const dir = `/proc/${pid}/task`;
  return new Map(readdirSync(dir).map((name) => [Number(name), policyOf(dir, Number(name))]));
}

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// Reason: SCHED_BATCH, /proc and chrt are Linux's; elsewhere the function does nothing (tested above).
describe.skipIf(process.platform !== 'linux')('SCHED_BATCH for real (Linux)', () => {
  it('this process: after a sweep, every thread but the main one is SCHED_BATCH', async () => {
    const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
    try {
      await new Promise((resolve) => worker.once('online', resolve));
      const threads = batchHelperThreads({ intervalMs: 0 });
      expect(threads).toBeDefined();
      await until('every helper thread is SCHED_BATCH', () => [...policies('self')].every(([tid, policy]) => tid === process.pid || policy === undefined || policy === SCHED_BATCH));
      expect(policies('self').get(process.pid)).toBe(SCHED_OTHER);
      expect(threads!.sweep()).toEqual([]);
    } finally {
      await worker.terminate();
    }
  });

  describe('imagegen run', () => {
    let dir: string;
    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'imagegen-helper-threads-'));
      await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 7, width: 32, height: 32 }));
    });
    afterAll(async () => {
      await killLiveCliProcesses();
      await rm(dir, { recursive: true, force: true });
    });

    /** Runs a 1 x 2 job with its provider calls held; returns the policies of its threads once `ready` says so. */
    async function runHeld(name: string, extraEnv: Record<string, string>, ready: (threads: Map<number, number | undefined>, pid: number) => boolean) {
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      const server = await startFakeGeminiServer({ hold: () => gate });
      try {
        const env = { ...geminiCliEnv({ server, dataDir: join(dir, name), price: 1 }), ...extraEnv };
        await writeFile(join(dir, `${name}.json`), JSON.stringify({ jobId: name, userId: 'u', stages: [{ quantity: 2, prompt: name, inputImage: 'in.png' }] }));
        const grant = await startCli(['credits', 'grant', 'u', '2'], { env, cwd: dir });
        expect((await grant.exited).code).toBe(0);
        const run = await startCli(['run', `${name}.json`, '--json'], { env, cwd: dir });
        const pid = run.child.pid!;
        await until('the provider is called', () => server.calls() > 0, 60_000);
        let seen = policies(pid);
        await until('the threads are as expected', () => ready((seen = policies(pid)), pid), 10_000).catch(() => undefined);
        release();
        const done = await run.exited;
        expect(done.code, done.stderr).toBe(0);
        return { seen, pid };
      } finally {
        release();
        await server.close();
      }
    }

    const helpers = (threads: Map<number, number | undefined>, pid: number) => [...threads].filter(([tid, policy]) => tid !== pid && policy !== undefined);

    it('while it runs, every thread but the main one is SCHED_BATCH', { timeout: 120_000 }, async () => {
      const { seen, pid } = await runHeld('batch', {}, (threads, p) => helpers(threads, p).every(([, policy]) => policy === SCHED_BATCH));
      expect(helpers(seen, pid).length).toBeGreaterThan(2); // the database's thread, the image thread, V8's and libuv's
      expect(helpers(seen, pid).filter(([, policy]) => policy !== SCHED_BATCH)).toEqual([]);
      expect(seen.get(pid)).toBe(SCHED_OTHER);
    });

    it('IMAGEGEN_HELPER_THREADS=normal: no thread is changed', { timeout: 120_000 }, async () => {
      // Two sweep intervals after the provider is called: long enough for a sweep to have run.
      let since = 0;
      const { seen, pid } = await runHeld('normal', { IMAGEGEN_HELPER_THREADS: 'normal' }, () => (since ||= Date.now()) < Date.now() - 1_000);
      expect(helpers(seen, pid).length).toBeGreaterThan(2);
      expect(helpers(seen, pid).filter(([, policy]) => policy !== SCHED_OTHER)).toEqual([]);
    });
  });
});
