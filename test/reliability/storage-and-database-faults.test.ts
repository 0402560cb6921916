/**
 * Storage and database faults through the real stack (`runJob` over `openPipeline`,
 * Gemini adapter against the fake Gemini server):
 *
 * - S3: a proxy in front of a real s3rver process fails 30% of the image PUTs (503,
 *   500, dropped connection, or "stored, then 500" which leaves an object the client
 *   thinks failed). The job must still deliver exactly, charge once per image, and
 *   leave no orphan object in the bucket. On PGlite, and on PostgreSQL when DATABASE_URL is set.
 * - PostgreSQL (DATABASE_URL only): every connection of the job's database is killed
 *   with `pg_terminate_backend` several times while the job runs. The job must end
 *   exact or honestly short (resumed if the kill hit its last write), never
 *   double-charged.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import type { Pipeline } from '../../src/pipeline.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';
import { createScratchDatabase, TEST_DATABASE_URL } from '../support/databases.js';
import { auditJob, expectEndedHonestly, type JobAudit } from './support/audit.js';
import { runCli, startCli, type CliResult } from '../support/cli.js';
import { startFaultyS3Proxy, type FaultyS3Proxy, type S3Fault } from './support/faulty-s3-proxy.js';
import { databaseKinds, openStack, PRICE, specOf, withPipelineOf, type Stack } from './support/stack.js';

const QUANTITIES = [6, 6, 6];
const TOTAL = 18;
/** Rounds of `pg_terminate_backend` on every session of the job's database while the first run works. */
const KILL_ROUNDS = 8;

for (const kind of databaseKinds()) {
  describe(`S3 PUT faults (proxy in front of s3rver) [${kind}]`, () => {
    let s3: TestS3Server | undefined;
    let proxy: FaultyS3Proxy | undefined;
    let stack: Stack | undefined;
    beforeAll(async () => {
      s3 = await startS3Server({ buckets: ['reliability'] });
      proxy = await startFaultyS3Proxy({ target: s3.endpoint, failureRate: 0, faults: ['503'], seed: 0 });
      stack = await openStack({
        database: kind,
        env: {
          S3_BUCKET: 'reliability',
          S3_ENDPOINT: proxy.endpoint,
          S3_FORCE_PATH_STYLE: 'true',
          S3_ACCESS_KEY_ID: s3.credentials.accessKeyId,
          S3_SECRET_ACCESS_KEY: s3.credentials.secretAccessKey,
        },
      });
    });
    afterAll(async () => {
      await stack?.close();
      await proxy?.close();
      await s3?.close();
    });

    const cases: readonly { name: string; faults: readonly S3Fault[] }[] = [
      { name: '503 SlowDown', faults: ['503'] },
      { name: '500 InternalError', faults: ['500'] },
      { name: 'dropped connections', faults: ['drop'] },
      { name: 'object stored, then 500 (the client sees a failure)', faults: ['stored_then_500'] },
      { name: 'all of them mixed', faults: ['503', '500', 'drop', 'stored_then_500'] },
    ];

    cases.forEach((c, i) => {
      it(`${c.name} on 30% of image PUTs: exactly ${TOTAL} images, one charge each, no orphan object`, async () => {
        if (!stack || !proxy) throw new Error('setup failed');
        const before = { ...proxy.injected };
        proxy.configure({ failureRate: 0.3, faults: c.faults, seed: 31 + i });
        const granted = TOTAL * PRICE + 1;
        const { userId, inputAttachId } = await stack.seedUser(granted);
        const events = await stack.run(specOf(userId, inputAttachId, QUANTITIES));
        proxy.configure({ failureRate: 0, faults: c.faults, seed: 0 });
        const finished = events.at(-1);
        if (finished?.type !== 'job:finished') throw new Error('no job:finished');
        const audit = await auditJob(stack.pipeline.database, stack.pipeline.store, finished.jobId);
        expectEndedHonestly(audit, { price: PRICE, granted, server: stack.server });
        expect(finished.status).toBe('completed');
        expect(audit.stamps).toHaveLength(TOTAL);
        // The faults were really injected, and each one was seen as a failed storage attempt.
        const injected = c.faults.reduce((n, f) => n + proxy!.injected[f] - before[f], 0);
        expect(injected).toBeGreaterThan(0);
        const storageFailures = events.filter((e) => e.type === 'attempt:failed' && e.errorClass === 'storage').length;
        expect(storageFailures).toBe(injected);
      });
    });
  });
}

// Reason: skipped only without DATABASE_URL (no PostgreSQL to kill sessions of; said aloud below); .ci/run sets it, so CI runs it.
const pgDescribe = TEST_DATABASE_URL ? describe : describe.skip;
if (!TEST_DATABASE_URL) console.warn('PostgreSQL connection kills: skipped: DATABASE_URL not set');

pgDescribe(`PostgreSQL connections killed mid-job with pg_terminate_backend, CLI process${TEST_DATABASE_URL ? '' : ' (skipped: DATABASE_URL not set)'}`, () => {
  const runs: CliResult[] = [];
  let killed = 0;
  let audit: JobAudit;
  const granted = 30 * PRICE;
  let server: FakeGeminiServer;

  beforeAll(async () => {
    server = await startFakeGeminiServer({ latencyMs: 60, jitterMs: 60, seed: 3 });
    const scratch = await createScratchDatabase('postgres');
    const dir = await mkdtemp(join(tmpdir(), 'imagegen-pgkill-'));
    const admin = new pg.Client({ connectionString: TEST_DATABASE_URL });
    await admin.connect();
    try {
      const dbName = new URL(scratch.config.databaseUrl ?? '').pathname.slice(1);
      const env = {
        DATABASE_URL: scratch.config.databaseUrl ?? '',
        IMAGEGEN_DATA_DIR: join(dir, 'data'),
        IMAGEGEN_PROVIDER: 'gemini',
        GEMINI_API_KEY: server.apiKey,
        GEMINI_BASE_URL: server.url,
        IMAGEGEN_PRICE_PER_IMAGE: String(PRICE),
        // Each kill fails every attempt whose statement was in flight: how many that is depends
        // on the machine's speed, so the budget is far above what KILL_ROUNDS can cost.
        IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '100',
        IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '1000',
        IMAGEGEN_BACKOFF_BASE_MS: '5',
        IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
        IMAGEGEN_CONCURRENCY: '4',
        IMAGEGEN_LOG_LEVEL: 'warn',
      };
      const withPipeline = <T>(fn: (p: Pipeline) => Promise<T>): Promise<T> => withPipelineOf(env, fn);
      const jobId = `pgkill-${process.pid}`;
      await withPipeline((p) => grantCredits(p.database, 'pg-user', granted));
      await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 9, width: 64, height: 36 }));
      await writeFile(join(dir, 'job.json'), JSON.stringify({ jobId, userId: 'pg-user', stages: [0, 1, 2].map((i) => ({ quantity: 10, prompt: `pg ${i}`, inputImage: 'in.png' })) }));

      // First run: once the job is generating (first provider call), every session of the
      // job's database is killed, KILL_ROUNDS times 300 ms apart (or until the process ends).
      const first = await startCli(['run', join(dir, 'job.json')], { env, cwd: dir });
      let running = true;
      void first.exited.then(() => (running = false));
      while (running && server.calls() === 0) await new Promise((r) => setTimeout(r, 10));
      for (let round = 0; running && round < KILL_ROUNDS; round++) {
        await new Promise((r) => setTimeout(r, 300));
        const { rows } = await admin.query<{ n: number }>(
          'select count(pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()',
          [dbName],
        );
        killed += rows[0]?.n ?? 0;
      }
      runs.push(await first.exited);
      // Then resume without kills until the job is done (a process supervisor would restart it).
      for (let i = 0; i < 2 && runs.at(-1)?.code !== 0; i++) {
        runs.push(await runCli(['run', join(dir, 'job.json')], { env, cwd: dir, timeoutMs: 60_000 }));
      }
      audit = await withPipeline((p) => auditJob(p.database, p.store, jobId));
      console.info(`[pg kill] ${killed} sessions terminated; exits: ${runs.map((r) => r.code ?? r.signal).join(', ')}; first stderr (tail): ${runs[0]?.stderr.slice(-1500)}`);
    } finally {
      await admin.end();
      await scratch.dispose();
      await rm(dir, { recursive: true, force: true });
    }
  }, 150_000);

  afterAll(async () => {
    await server?.close();
  });

  it('after resuming, the job is exact: every image stored once and charged exactly once, the ledger replays', () => {
    expect(killed, 'sessions were really terminated').toBeGreaterThan(0);
    expect(runs.at(-1)?.code).toBe(0);
    expectEndedHonestly(audit, { price: PRICE, granted, server });
    expect(audit.stored.rowStatus).toBe('completed');
    expect(audit.stamps).toHaveLength(30);
  });

  // Was a bug: pg-pool removes its 'error' listener from a checked-out client and kysely adds none, so a
  // killed connection was an unhandled 'error' that killed the process. openPostgres now listens.
  it('the process rides out killed connections (database faults are retryable) instead of crashing', () => {
    expect(runs[0]?.stderr ?? '').not.toMatch(/Unhandled 'error' event|Emitted 'error' event on Client instance/);
    expect(runs[0]?.code).toBe(0);
  });
});
