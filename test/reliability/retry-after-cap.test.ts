/**
 * A provider that asks for a retry delay longer than we honour, through the real CLI
 * (`imagegen run --provider gemini` in a child process against the fake Gemini server).
 *
 * `Retry-After: 3600` used to make a run wait silently for an hour, and
 * `retryDelay: "99999999999s"` overflowed Node's timer (TimeoutOverflowWarning, fired
 * after 1 ms) and burnt every attempt at once. Now a delay above
 * `IMAGEGEN_MAX_RETRY_AFTER_MS` (default 120000) ends the job's new attempts with class
 * `quota_exhausted`, which halts the job like `auth`, and the summary says so.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openDatabase } from '../../src/db/database.js';
import { startFakeGeminiServer, type FakeBehaviorFn } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { runCli } from '../support/cli.js';

interface Summary {
  status: string;
  deliveredImages: number;
  stages: { index: number; delivered: number; shortfall: null | { count: number; reason: string; errorClass: string | null } }[];
  attempts: { total: number; failed: number; byClass: Record<string, number> };
  credits: { reserved: number; captured: number; released: number };
}

describe('a server retry delay above IMAGEGEN_MAX_RETRY_AFTER_MS ends the job as quota_exhausted', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A data folder with credits, a two-stage job file and a fake server answering `behavior`. */
  async function setup(behavior: FakeBehaviorFn, extraEnv: Record<string, string> = {}, grantCredits = true) {
    const server = await startFakeGeminiServer({ behavior });
    cleanups.push(() => server.close());
    const dir = await mkdtemp(join(tmpdir(), 'imagegen-retry-cap-'));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 9, width: 48, height: 27 }));
    const env: Record<string, string> = {
      IMAGEGEN_DATA_DIR: join(dir, 'data'),
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      IMAGEGEN_LOG_LEVEL: 'warn',
      IMAGEGEN_BACKOFF_BASE_MS: '5',
      IMAGEGEN_BACKOFF_MAX_MS: '20',
      IMAGEGEN_CONCURRENCY: '2',
      IMAGEGEN_STAGE_CONCURRENCY: '1',
      ...extraEnv,
    };
    if (grantCredits) {
      const grant = await runCli(['credits', 'grant', 'quota-user', '100'], { env, cwd: dir });
      expect(grant.code, grant.stderr).toBe(0);
    }
    let jobs = 0;
    const writeJob = async (quantities: readonly number[]) => {
      const path = join(dir, `job-${++jobs}.json`);
      const jobId = `quota-${jobs}-${Date.now().toString(36)}`;
      await writeFile(path, JSON.stringify({ jobId, userId: 'quota-user', stages: quantities.map((quantity, i) => ({ quantity, prompt: `stage ${i}`, inputImage: 'in.png' })) }));
      return { path, jobId };
    };
    return { server, dir, env, writeJob };
  }

  it('`Retry-After: 3600`: the job ends at once, failed, every stage short with quota_exhausted, no replacement sent, nothing charged', { timeout: 120_000 }, async () => {
    const { server, dir, env, writeJob } = await setup(() => ({ status: 429, retryDelay: null, retryAfter: '3600' }));
    const job = await writeJob([3, 3]);
    const run = await runCli(['run', job.path, '--json', '--provider', 'gemini'], { env, cwd: dir, timeoutMs: 100_000 });
    expect(run.code, run.stderr.slice(-2000)).toBe(1);
    const summary = JSON.parse(run.stdout) as Summary;
    expect(summary.status).toBe('failed');
    expect(summary.deliveredImages).toBe(0);
    for (const stage of summary.stages) {
      expect(stage.shortfall).toMatchObject({ count: 3, errorClass: 'quota_exhausted' });
      expect(['non_retryable', 'job_aborted']).toContain(stage.shortfall?.reason);
    }
    // Only first attempts were ever sent (at most the 2 in flight when the first answer came), no replacement.
    expect(server.calls()).toBeGreaterThanOrEqual(1);
    expect(server.calls()).toBeLessThanOrEqual(2);
    expect(summary.attempts.byClass).toEqual({ quota_exhausted: server.calls() });
    expect(summary.credits).toEqual({ reserved: 6, captured: 0, released: 6 });

    // The attempt says what the server asked for and the cap.
    const database = await openDatabase({ dataDir: join(dir, 'data', 'db') });
    cleanups.push(() => database.close());
    const rows = await database.db.selectFrom('attempts').select(['attempt', 'error_class', 'http_status', 'message']).where('job_id', '=', job.jobId).execute();
    expect(rows.map((r) => r.attempt)).toEqual(rows.map(() => 1));
    expect(rows[0]).toMatchObject({ error_class: 'quota_exhausted', http_status: 429 });
    expect(rows[0]?.message).toContain('server asked to wait 3600 s (cap 120 s)');
    await database.close();

    // The text summary says it plainly.
    const status = await runCli(['status', job.jobId], { env, cwd: dir });
    expect(status.stdout).toContain('provider quota exhausted');
    expect(status.stdout).toContain('quota_exhausted');
  });

  it('`retryDelay: "99999999999s"`: no timer overflow (no TimeoutOverflowWarning, attempts not burnt): quota_exhausted', { timeout: 120_000 }, async () => {
    const { server, dir, env, writeJob } = await setup(() => ({ status: 429, retryDelay: '99999999999s', retryAfter: null }), { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '5' });
    const job = await writeJob([2]);
    const run = await runCli(['run', job.path, '--json', '--provider', 'gemini'], { env, cwd: dir, timeoutMs: 100_000 });
    expect(run.code, run.stderr.slice(-2000)).toBe(1);
    expect(run.stderr).not.toContain('TimeoutOverflowWarning');
    const summary = JSON.parse(run.stdout) as Summary;
    expect(summary.stages[0]?.shortfall).toMatchObject({ count: 2, reason: 'non_retryable', errorClass: 'quota_exhausted' });
    expect(server.calls()).toBe(1);
    expect(summary.attempts.byClass).toEqual({ quota_exhausted: 1 });
  });

  it('IMAGEGEN_MAX_RETRY_AFTER_MS sets the cap: a delay within it is waited for and the job completes; one above it is quota_exhausted', { timeout: 150_000 }, async () => {
    let asked = '0.2s';
    const { server, dir, env, writeJob } = await setup(({ n }) => (n === 1 ? { status: 429, retryDelay: asked, retryAfter: null } : 'image'), {
      IMAGEGEN_MAX_RETRY_AFTER_MS: '1000',
    });
    const within = await runCli(['run', (await writeJob([1])).path, '--json', '--provider', 'gemini'], { env, cwd: dir, timeoutMs: 100_000 });
    expect(within.code, within.stderr.slice(-2000)).toBe(0);
    expect((JSON.parse(within.stdout) as Summary).attempts.byClass).toEqual({ rate_limited: 1 });
    expect(server.calls()).toBe(2);

    // 2 s is far below the default cap (120 s) but above this one.
    asked = '2s';
    const calls = server.calls();
    server.setBehavior(({ n }) => (n === calls + 1 ? { status: 429, retryDelay: asked, retryAfter: null } : 'image'));
    const above = await runCli(['run', (await writeJob([1])).path, '--json', '--provider', 'gemini'], { env, cwd: dir, timeoutMs: 100_000 });
    expect(above.code, above.stderr.slice(-2000)).toBe(1);
    expect((JSON.parse(above.stdout) as Summary).stages[0]?.shortfall).toMatchObject({ reason: 'non_retryable', errorClass: 'quota_exhausted' });
    expect(server.calls()).toBe(calls + 1);
  });

  it.each(['abc', '-1', '1.5', '2147483648'])('IMAGEGEN_MAX_RETRY_AFTER_MS=%s is refused: exit 2 naming the variable, no provider call', { timeout: 60_000 }, async (value) => {
    const { server, dir, env, writeJob } = await setup(() => 'image', {}, false);
    const job = await writeJob([1]);
    const run = await runCli(['run', job.path, '--provider', 'gemini'], { env: { ...env, IMAGEGEN_MAX_RETRY_AFTER_MS: value }, cwd: dir });
    expect(run.code, run.stderr.slice(-2000)).toBe(2);
    expect(run.stderr).toContain('IMAGEGEN_MAX_RETRY_AFTER_MS');
    expect(server.calls()).toBe(0);
  });
});
