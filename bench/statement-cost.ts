/**
 * What the hot path's statements cost the process in CPU, one at a time (no images, no
 * provider): `startAttempt` and `deliverSlot` (the two statements of every delivered image),
 * and a trivial statement with a parameter (what a round trip to the database costs by
 * itself: kysely, the message to the database's thread and back, PGlite's protocol).
 * Each is called `BENCH_CALLS` (600) times in a row on fresh slots of a 3-stage job, after 50
 * unmeasured calls; CPU is `process.cpuUsage()` (every thread). PGlite in memory, in its own
 * thread as `openPipeline` runs it, unless `IMAGEGEN_PGLITE_THREAD=off`;
 * `BENCH_DATABASE_URL` = PostgreSQL instead (then the server's own CPU is not counted).
 * `BENCH_ROUNDS` (2) rounds. BENCHMARKS.md 11J.
 *
 * `npx tsc -p tsconfig.bench.json && npm run bench:build && node dist-bench/bench/statement-cost.js`
 */
import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import { loadConfig } from '../src/config.js';
import { createAttachment, deliverSlot, grantCredits, openDatabase, startAttempt, submitJob, type Database } from '../src/db/index.js';
import { scratchPostgres } from './support.js';

const CALLS = Number(process.env['BENCH_CALLS'] ?? 600);
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 2);
const WARM = 50;

const cpuMs = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

async function newJob(database: Database, userId: string, inputAttachId: string): Promise<string> {
  const jobId = `job-${randomUUID()}`;
  const stages = [0, 1, 2].map((index) => ({ index, prompt: 'p', aspectRatio: '1:1' as const, quantity: WARM + CALLS, inputAttachId, inputImage: null }));
  await submitJob(database, { spec: { jobId, userId, productionId: 'bench', stages }, pricePerImage: 1 });
  return jobId;
}

async function main() {
  const postgres = process.env['BENCH_DATABASE_URL'] ? await scratchPostgres(process.env['BENCH_DATABASE_URL']) : undefined;
  const threaded = loadConfig(process.env).pgliteThread !== false;
  const database = await openDatabase(postgres ? { databaseUrl: postgres.url } : { pgliteThread: threaded });
  try {
    const userId = `user-${randomUUID()}`;
    await grantCredits(database, userId, 10_000_000);
    const { attachId } = await createAttachment(database, { userId, storageKey: `inputs/${randomUUID()}.webp`, contentType: 'image/webp', byteSize: 1234, width: 64, height: 36 });
    const where = postgres ? 'PostgreSQL (our process only)' : `PGlite in memory, ${threaded ? 'in its own thread' : 'in the main thread'}`;
    console.log(`statement-cost: ${CALLS} calls each, ${where}, CPU of the process per call`);
    const measure = async (label: string, call: (jobId: string, stage: number, slot: number) => Promise<unknown>) => {
      const jobId = await newJob(database, userId, attachId);
      for (let slot = 0; slot < WARM; slot++) await call(jobId, 0, slot);
      const cpu0 = cpuMs();
      const t0 = performance.now();
      for (let slot = 0; slot < CALLS; slot++) await call(jobId, 1, slot);
      const cpu = cpuMs() - cpu0;
      const wall = performance.now() - t0;
      console.log(`  ${label.padEnd(34)} ${((cpu / CALLS) * 1000).toFixed(0).padStart(5)} us CPU, ${((wall / CALLS) * 1000).toFixed(0).padStart(5)} us wall per call`);
    };
    for (let round = 1; round <= ROUNDS; round++) {
      console.log(` round ${round}`);
      await measure('startAttempt', (jobId, stageIndex, slotIndex) => startAttempt(database, { jobId, stageIndex, slotIndex, attempt: 1 }));
      await measure('deliverSlot', (jobId, stageIndex, slotIndex) =>
        deliverSlot(database, { jobId, stageIndex, slotIndex, attempt: 1, storageKey: `jobs/${jobId}/${stageIndex}/${slotIndex}/1.webp`, contentType: 'image/webp', byteSize: 2048, width: 1024, height: 1024 }),
      );
      await measure('select $1 (a round trip)', (_jobId, _stage, slot) => sql`select ${slot}::int as x`.execute(database.db));
    }
  } finally {
    await database.close();
    await postgres?.drop();
  }
}

await main();
