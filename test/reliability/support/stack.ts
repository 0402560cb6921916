/**
 * The real stack for in-process reliability runs: `loadConfig` + `openPipeline`
 * (PGlite in a temp data folder, or a fresh PostgreSQL database; folder or S3
 * storage) with the Gemini adapter pointed at a local fake Gemini server, and
 * `runJob` from the library. Everything opened here is closed by `close()`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { lastValueFrom, toArray } from 'rxjs';
import { loadConfig } from '../../../src/config.js';
import { grantCredits } from '../../../src/db/ops/grant-credits.js';
import type { PipelineEvent } from '../../../src/domain/events.js';
import { engineOptionsOf, openPipeline, type Pipeline } from '../../../src/pipeline.js';
import { runJob } from '../../../src/jobs/run-job.js';
import type { RunJobOptions } from '../../../src/streams/run-job.js';
import { importInputImage } from '../../../src/jobs/submit-job.js';
import { startFakeGeminiServer, type FakeGeminiServer, type FakeGeminiServerOptions } from '../../support/fake-gemini-server.js';
import { renderStampedPng } from '../../support/stamped-image.js';
import { createScratchDatabase, TEST_PGLITE_TEMPLATE_DIR, type DatabaseKind, type ScratchDatabase } from '../../support/databases.js';

export const PRICE = 2;

export interface StackOptions {
  readonly database: DatabaseKind;
  readonly server?: FakeGeminiServerOptions;
  /** Extra environment (e.g. S3_*), on top of the fast-retry defaults below. */
  readonly env?: Readonly<Record<string, string>>;
}

export interface Stack {
  readonly pipeline: Pipeline;
  readonly server: FakeGeminiServer;
  readonly scratch: ScratchDatabase;
  readonly dataDir: string;
  /** A user with `credits` and an imported input image; returns ids. */
  seedUser(credits: number): Promise<{ userId: string; inputAttachId: string }>;
  /** Runs a job through `runJob` and returns every event. */
  run(spec: unknown, options?: RunJobOptions): Promise<PipelineEvent[]>;
  close(): Promise<void>;
}

let users = 0;

/** Environment of fast, patient retries: backoff in ms, enough budget for 30% failure rates. */
export const FAST_RETRY_ENV = Object.freeze({
  IMAGEGEN_BACKOFF_BASE_MS: '5',
  IMAGEGEN_BACKOFF_MAX_MS: '50',
  IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '12',
  IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200',
  // Generous: under a loaded CI machine a short timeout turns slow answers into spurious `timeout`s.
  // Tests of hanging calls pass a short `attemptTimeoutMs` per run instead.
  IMAGEGEN_ATTEMPT_TIMEOUT_MS: '8000',
  GEMINI_TIMEOUT_MS: '8000',
  IMAGEGEN_PRICE_PER_IMAGE: String(PRICE),
  IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
  IMAGEGEN_LOG_LEVEL: 'silent',
  IMAGEGEN_CONCURRENCY: '8',
  IMAGEGEN_STAGE_CONCURRENCY: '4',
});

export async function openStack(options: StackOptions): Promise<Stack> {
  const server = await startFakeGeminiServer(options.server);
  const dataDir = await mkdtemp(join(tmpdir(), 'imagegen-rel-'));
  let scratch: ScratchDatabase | undefined;
  let pipeline: Pipeline | undefined;
  try {
    scratch = await createScratchDatabase(options.database);
    const env: Record<string, string> = {
      ...FAST_RETRY_ENV,
      IMAGEGEN_PROVIDER: 'gemini',
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      ...(scratch.config.databaseUrl ? { DATABASE_URL: scratch.config.databaseUrl } : {}),
      IMAGEGEN_PGLITE_TEMPLATE_DIR: TEST_PGLITE_TEMPLATE_DIR,
      ...options.env,
    };
    const config = loadConfig(env, { dataDir });
    pipeline = await openPipeline(config);
  } catch (error) {
    await server.close();
    await scratch?.dispose().catch(() => {});
    await rm(dataDir, { recursive: true, force: true });
    throw error;
  }
  const p = pipeline;
  const s = scratch;
  return {
    pipeline: p,
    server,
    scratch: s,
    dataDir,
    async seedUser(credits) {
      const userId = `rel-user-${process.pid}-${++users}`;
      await grantCredits(p.database, userId, credits);
      const png = await renderStampedPng({ stamp: 0xabcdef, width: 48, height: 27 });
      const inputAttachId = await importInputImage(p, userId, { bytes: png, mimeType: 'image/png', width: 48, height: 27 });
      return { userId, inputAttachId };
    },
    run(spec, runOptions = {}) {
      return lastValueFrom(
        runJob(p, { spec, pricePerImage: p.config.pricePerImage }, { ...engineOptionsOf(p.config), ...runOptions }).pipe(toArray()),
      );
    },
    async close() {
      await p.close();
      await server.close();
      await settleSessions(s);
      await s.dispose();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** A job spec in the source system's shape. */
export function specOf(userId: string, inputAttachId: string, quantities: readonly number[], jobId?: string): unknown {
  return {
    ...(jobId ? { jobId } : {}),
    userId,
    productionId: 'rel',
    stages: quantities.map((quantity, i) => ({ quantity, prompt: `reliability stage ${i}`, 'aspect-ratio': '16:9', mergedImageAttachId: inputAttachId })),
  };
}

/**
 * `IMAGEGEN_RELIABILITY_FULL=1` (script `test:reliability:full`): more repetitions (every
 * bad-input case through the CLI, more kills, larger jobs). Never more database legs: both
 * legs always run when PostgreSQL is there.
 */
export const FULL = process.env['IMAGEGEN_RELIABILITY_FULL'] === '1';

/**
 * Database kinds every reliability suite runs on: PGlite (the embedded default, what most users
 * run first) always, and PostgreSQL too when DATABASE_URL is set (as in CI). Quick mode cuts
 * repetitions, never a leg.
 */
export function databaseKinds(): DatabaseKind[] {
  return process.env['DATABASE_URL'] ? ['pglite', 'postgres'] : ['pglite'];
}

/**
 * After `close()` the pool has ended its clients, but PostgreSQL may list a backend in
 * `pg_stat_activity` for a moment after its client hung up; give them up to 3 s to go so
 * the leak check of `dispose()` reports real leaks only.
 */
async function settleSessions(scratch: ScratchDatabase): Promise<void> {
  const url = scratch.config.databaseUrl;
  if (!url || !process.env['DATABASE_URL']) return;
  const name = new URL(url).pathname.slice(1);
  const admin = new pg.Client({ connectionString: process.env['DATABASE_URL'] });
  await admin.connect();
  try {
    for (let i = 0; i < 30; i++) {
      const { rows } = await admin.query<{ n: number }>('select count(*)::int as n from pg_stat_activity where datname = $1', [name]);
      if ((rows[0]?.n ?? 0) === 0) {
        if (i > 0) console.warn(`[stack] ${name}: sessions took ${i * 100} ms to go after close()`);
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await admin.end();
  }
}

/**
 * Opens the same database and storage a CLI child process with `env` uses, in this
 * process, runs `fn` and closes it (the CLI must not hold the embedded database then).
 */
export async function withPipelineOf<T>(env: Readonly<Record<string, string>>, fn: (pipeline: Pipeline) => Promise<T>): Promise<T> {
  const pipeline = await openPipeline(loadConfig({ ...env, IMAGEGEN_LOG_LEVEL: 'silent' }));
  try {
    return await fn(pipeline);
  } finally {
    await pipeline.close();
  }
}
