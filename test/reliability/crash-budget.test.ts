/**
 * A crash never costs budget (issue 9, defect 1), through the real CLI.
 *
 * An attempt whose process died is not a provider failure: on resume it is
 * `abandoned` and charged to neither the slot's nor the stage's retry budget. A job
 * whose runs keep dying without delivering ends `failed` with `crash_loop` instead of
 * being run forever, and a job that older code ended `partial` only because such
 * attempts were charged is repaired by the next `run` of its file.
 *
 * Kills are placed by events the test observes (provider calls arriving at the fake
 * Gemini server), never by the wall clock; the only timeouts are hang guards.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { finishJob } from '../../src/db/ops/finish-job.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { loadJob } from '../../src/db/ops/load-job.js';
import { seededRandom } from '../../src/domain/random.js';
import { endedResult } from '../../src/domain/result.js';
import type { Pipeline } from '../../src/pipeline.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { createScratchDatabase, type ScratchDatabase } from '../support/databases.js';
import { auditJob, expectEndedHonestly } from './support/audit.js';
import { geminiCliEnv, runCli, startCli, type CliProcess } from '../support/cli.js';
import { databaseKinds, FULL, withPipelineOf } from './support/stack.js';

const PRICE = 2;
const SEED = Number(process.env['IMAGEGEN_CRASH_SEED'] ?? 9_2026);
const KINDS = databaseKinds();
/** Kills of the random-kill case: 10 in full mode, 4 in `npm test` (repetitions are cut, not legs). */
const KILLS = FULL ? 10 : 4;

/** Polls `condition` until it holds; the deadline only guards against a hang. */
async function until(condition: () => boolean, what: string, guardMs = 60_000): Promise<void> {
  const deadline = Date.now() + guardMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`still waiting for ${what} after ${guardMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

interface Summary {
  status: string;
  deliveredImages: number;
  stages: { delivered: number; shortfall: null | { count: number; reason: string; errorClass: string | null } }[];
  attempts: { total: number; failed: number; abandoned: number; byClass: Record<string, number> };
  credits: { reserved: number; captured: number; released: number };
}

for (const kind of KINDS) {
  describe(`a crash never costs budget [${kind}]`, () => {
    let server: FakeGeminiServer;
    let dir: string;
    /** While true every provider call hangs (a run is killed with attempts in flight); else answers fast. */
    let hanging = true;
    const scratches: ScratchDatabase[] = [];

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'imagegen-crash-budget-'));
      server = await startFakeGeminiServer({ latencyMs: () => (hanging ? 600_000 : 40), seed: SEED, imageSize: 64 });
      await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 5, width: 64, height: 36 }));
    });

    afterAll(async () => {
      await server?.close();
      for (const scratch of scratches) await scratch.dispose();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    /** A fresh database and data folder, a user with credits, and a job file of `quantity` images. */
    async function setUp(name: string, quantity: number, extraEnv: Record<string, string> = {}) {
      const scratch = await createScratchDatabase(kind);
      scratches.push(scratch);
      const jobId = `${name}-${kind}-${process.pid}`;
      const userId = `${name}-user`;
      const granted = quantity * PRICE + 7;
      const env: Record<string, string> = {
        ...geminiCliEnv({ server, dataDir: join(dir, `${name}-data`), price: PRICE, databaseUrl: scratch.config.databaseUrl }),
        ...extraEnv,
      };
      const file = join(dir, `${name}.json`);
      await writeFile(file, JSON.stringify({ jobId, userId, stages: [{ quantity, prompt: `${name} stage`, 'aspect-ratio': '1:1', inputImage: 'in.png' }] }));
      const withPipeline = <T>(fn: (p: Pipeline) => Promise<T>): Promise<T> => withPipelineOf(env, fn);
      await withPipeline((p) => grantCredits(p.database, userId, granted));
      return { jobId, userId, granted, env, file, withPipeline };
    }

    /**
     * Starts `run`, waits until `calls` provider calls of this run arrived, then kills it:
     * SIGKILL, or two Ctrl-C in a row (the second one exits at once, attempts in flight).
     */
    async function killAfterCalls(run: () => Promise<CliProcess>, calls: number, how: 'SIGKILL' | 'SIGINT twice' = 'SIGKILL'): Promise<void> {
      const before = server.calls();
      const cli = await run();
      let ended = false;
      void cli.exited.then(() => (ended = true));
      await until(() => ended || server.calls() - before >= calls, `${calls} provider calls`);
      expect(ended, `the run ended by itself before it was killed:\n${cli.stderr().slice(-600)}`).toBe(false);
      if (how === 'SIGKILL') {
        cli.child.kill('SIGKILL');
        expect((await cli.exited).signal).toBe('SIGKILL');
        return;
      }
      cli.child.kill('SIGINT');
      await until(() => cli.stderr().includes('SIGINT: finishing in-flight attempts'), 'the first SIGINT to be seen');
      cli.child.kill('SIGINT');
      expect((await cli.exited).code).toBe(1);
    }

    it('two SIGKILLs with 8 attempts in flight each, then a run: 10/10, 16 attempts abandoned, no budget spent', async () => {
      // The repro: 1 stage x 10, 8 in flight, default budget (5 per slot, 10 per stage).
      const { jobId, granted, env, file, withPipeline } = await setUp('repro', 10, { IMAGEGEN_STAGE_CONCURRENCY: '8', IMAGEGEN_CONCURRENCY: '8' });
      hanging = true;
      for (let kill = 0; kill < 2; kill++) await killAfterCalls(() => startCli(['run', file], { env, cwd: dir }), 8);
      hanging = false;
      const result = await runCli(['run', file, '--json'], { env, cwd: dir, timeoutMs: 120_000 });
      expect({ code: result.code, stderr: result.stderr.slice(-600) }).toMatchObject({ code: 0 });
      const summary = JSON.parse(result.stdout) as Summary;
      expect(summary).toMatchObject({ status: 'completed', deliveredImages: 10, attempts: { failed: 0, abandoned: 16, total: 26 } });
      expect(summary.stages[0]?.shortfall).toBeNull();

      const stats = await runCli(['stats', '--json'], { env, cwd: dir });
      expect(JSON.parse(stats.stdout)).toMatchObject({ abandoned: 16, failed: 0, delivered: 10 });
      const audit = await withPipeline((p) => auditJob(p.database, p.store, jobId));
      expectEndedHonestly(audit, { price: PRICE, granted, server });
    }, 180_000);

    it('runs that keep dying without delivering end the job failed with crash_loop, credits released, no further call', async () => {
      const { jobId, userId, granted, env, file, withPipeline } = await setUp('loop', 3, { IMAGEGEN_MAX_CRASH_RESUMES: '2' });
      hanging = true;
      for (let kill = 0; kill < 2; kill++) await killAfterCalls(() => startCli(['run', file], { env, cwd: dir }), 1);
      const before = server.calls();
      const result = await runCli(['run', file, '--json'], { env, cwd: dir, timeoutMs: 120_000 });
      expect(server.calls() - before).toBe(0);
      expect({ code: result.code, stderr: result.stderr.slice(-600) }).toMatchObject({ code: 1 });
      const summary = JSON.parse(result.stdout) as Summary;
      expect(summary).toMatchObject({ status: 'failed', deliveredImages: 0, credits: { reserved: 3 * PRICE, captured: 0, released: 3 * PRICE } });
      expect(summary.stages[0]?.shortfall).toEqual({ count: 3, reason: 'crash_loop', errorClass: null, detail: null });
      const audit = await withPipeline((p) => auditJob(p.database, p.store, jobId));
      expectEndedHonestly(audit, { price: PRICE, granted, server });
      const balance = await runCli(['credits', 'balance', userId, '--json'], { env, cwd: dir });
      expect(JSON.parse(balance.stdout)).toMatchObject({ balance: granted, reserved: 0 });
    }, 180_000);

    it('a job that older code ended partial only because of abandoned attempts (two Ctrl-C) is repaired by the next run', async () => {
      const { jobId, granted, env, file, withPipeline } = await setUp('repair', 6, { IMAGEGEN_STAGE_CONCURRENCY: '6', IMAGEGEN_CONCURRENCY: '6' });
      hanging = true;
      await killAfterCalls(() => startCli(['run', file], { env, cwd: dir }), 6, 'SIGINT twice');
      // What the code before this fix wrote on the next run: `partial`, short with
      // `budget_exhausted`, the dead run's attempts still `started`, the reservation released.
      await withPipeline(async (p) => {
        const job = await loadJob(p.database, jobId);
        if (!job) throw new Error('no job');
        const result = endedResult(jobId, [{ index: 0, quantity: 6, attachIds: job.stages[0]!.map((s) => s.attachId) }], { reason: 'budget_exhausted', errorClass: null });
        await finishJob(p.database, jobId, { ...result, status: 'partial' });
      });
      hanging = false;
      const result = await runCli(['run', file, '--json'], { env, cwd: dir, timeoutMs: 120_000 });
      expect({ code: result.code, stderr: result.stderr.slice(-600) }).toMatchObject({ code: 0 });
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'completed', deliveredImages: 6, attempts: { failed: 0, abandoned: 6 } });
      const audit = await withPipeline((p) => auditJob(p.database, p.store, jobId));
      expectEndedHonestly(audit, { price: PRICE, granted, server });
      // Run again: an ended job is reprinted, not reopened.
      const again = await runCli(['run', file, '--json'], { env, cwd: dir });
      expect(again.code).toBe(0);
      expect(JSON.parse(again.stdout)).toMatchObject({ status: 'completed', deliveredImages: 6 });
    }, 180_000);

    it(`${KILLS} SIGKILLs at random moments with 5 images in flight, then a run: exact count, no duplicate, balance exact, budget whole`, async () => {
      const QUANTITY = KILLS * 4;
      const { jobId, granted, env, file, withPipeline } = await setUp('ten-kills', QUANTITY, { IMAGEGEN_STAGE_CONCURRENCY: '5', IMAGEGEN_CONCURRENCY: '5' });
      // Calls answer (slowly enough that kills land with 5 in flight, and with deliveries between kills).
      hanging = false;
      const slow = await startFakeGeminiServer({ latencyMs: 250, jitterMs: 150, seed: SEED, imageSize: 64 });
      const slowEnv = { ...env, GEMINI_API_KEY: slow.apiKey, GEMINI_BASE_URL: slow.url };
      const random = seededRandom(SEED + (kind === 'postgres' ? 1 : 0));
      const log: string[] = [];
      try {
        for (let kill = 1; kill <= KILLS; kill++) {
          const before = slow.calls();
          const cli = await startCli(['run', file], { env: slowEnv, cwd: dir });
          let ended = false;
          void cli.exited.then(() => (ended = true));
          // Stage and provider limits are both 5, so a call beyond the fifth starts only when a
          // delivery committed and freed its permit: after call 5 + j, five attempts are in flight
          // and j images were delivered by this run (so the crash-loop guard, rightly, stays quiet).
          const calls = 5 + 1 + Math.floor(random() * 3);
          await until(() => ended || slow.calls() - before >= calls, `${calls} provider calls`);
          await new Promise((r) => setTimeout(r, Math.floor(random() * 150)));
          if (ended) break; // the job finished before this kill: nothing left to interrupt
          cli.child.kill('SIGKILL');
          await cli.exited;
          // At rest after every third kill (opening the database costs seconds on PGlite):
          // committed deliveries are charged once, the ledger replays.
          if (kill % 3 !== 0) continue;
          const audit = await withPipeline((p) => auditJob(p.database, p.store, jobId, { readStamps: false }));
          log.push(`kill ${kill}: ${audit.stored.result.deliveredImages}/${QUANTITY}`);
          expect(audit.captures).toHaveLength(audit.stored.result.deliveredImages);
          expect(audit.balance).toEqual(audit.replayed);
        }
        const result = await runCli(['run', file, '--json'], { env: slowEnv, cwd: dir, timeoutMs: 120_000 });
        console.info(`[crash-budget ${kind}] seed ${SEED}: ${log.join(', ')}`);
        expect({ code: result.code, stderr: result.stderr.slice(-600), log }).toMatchObject({ code: 0 });
        const summary = JSON.parse(result.stdout) as Summary;
        // The budget is whole: no provider failed, so nothing may be short or `budget_exhausted`.
        expect(summary).toMatchObject({ status: 'completed', deliveredImages: QUANTITY, attempts: { failed: 0 } });
        expect(summary.stages[0]?.shortfall).toBeNull();
        const audit = await withPipeline((p) => auditJob(p.database, p.store, jobId));
        expectEndedHonestly(audit, { price: PRICE, granted, server: slow });
        expect(audit.stamps).toHaveLength(QUANTITY);
      } finally {
        await slow.close();
      }
    }, 300_000);
  });
}
