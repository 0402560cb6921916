/**
 * Workers stopped mid-job on PostgreSQL (`DATABASE_URL`): one killed with SIGKILL, one
 * sent SIGTERM; either way another worker finishes the job exactly, with one reservation
 * and one charge per image. Each test points the CLI at its own fake Gemini server that
 * keeps the first worker busy until it is stopped. The suite creates its own database
 * and drops it after. Skipped, visibly, when `DATABASE_URL` is not set.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGeminiServer } from '../support/fake-gemini-server.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { jobsTaken, logLines, textLines, waitFor } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { generatedFiles, jobSpec, parseSingleJson, readDb, stampsOnDisk, type Summary } from '../support/cli-workspace.js';

if (!TEST_DATABASE_URL) console.warn('e2e PostgreSQL leg (workers stopped mid-job) skipped: DATABASE_URL not set');

describe.skipIf(!TEST_DATABASE_URL)('imagegen workers stopped mid-job on PostgreSQL (DATABASE_URL set; skipped otherwise)', () => {
  /** Its own fake server is unused: each test runs the CLI against a server of its own. */
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({
      postgres: true,
      // As the other PostgreSQL suite's: budgets no kill can exhaust; each test sets a short queue expiry.
      env: { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200', IMAGEGEN_QUEUE_EXPIRE_SECONDS: '30' },
    });
  });

  // Fails if a CLI process left a connection open (they are all dead by then).
  afterAll(() => suite?.close());

  /**
   * pg-boss expires a dead worker's active queue job during maintenance; the worker runs
   * maintenance every min(30, IMAGEGEN_QUEUE_EXPIRE_SECONDS) s, so with an expiry of 4 s
   * another worker resumes the job within seconds.
   */
  it('a worker killed with SIGKILL mid-job: another worker resumes the job to exactly the asked images, with one reservation and one charge per image', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-crash';
    const JOB_ID = 'e2e-pg-worker-crash';
    const TOTAL = 16;
    // The first 6 calls answer; while `stalled`, later calls hang so the first worker is surely mid-job when killed.
    let stalled = true;
    const flaky = await startFakeGeminiServer({ latencyMs: ({ n }) => (n <= 6 || !stalled ? 100 : 120_000) });
    try {
      // A short queue expiry so pg-boss hands the dead worker's job to the next worker quickly.
      const crashEnv = { ...suite.env, GEMINI_BASE_URL: flaky.url, IMAGEGEN_QUEUE_EXPIRE_SECONDS: '4' };
      await suite.grant(USER, 40, { env: crashEnv });
      const file = await suite.ws.writeJob('worker-crash.json', jobSpec(JOB_ID, USER, [['first', 8], ['second', 8]]));
      expect((await suite.run(['submit', file], { env: crashEnv })).code).toBe(0);

      const doomed = await suite.start(['worker', '--concurrency', '2'], { env: crashEnv });
      const storage = join(suite.ws.dataDir, 'storage');
      // Committed deliveries (rows), not files (stored before the commit): the kill then surely leaves work done.
      await waitFor(
        'the first worker to commit deliveries, then hang',
        async () =>
          (jobsTaken(doomed.stderr()).has(JOB_ID) && flaky.calls() > 6 && (await readDb(suite.database, JOB_ID, USER)).attachments.length >= 4) ||
          doomed.child.exitCode !== null,
        60_000,
        200,
      );
      expect(doomed.child.exitCode, doomed.stderr()).toBeNull();
      doomed.child.kill('SIGKILL');
      expect((await doomed.exited).signal).toBe('SIGKILL');
      const committedAtKill = (await readDb(suite.database, JOB_ID, USER)).attachments.length;
      expect(committedAtKill).toBeGreaterThanOrEqual(4);
      const callsBefore = flaky.calls();
      stalled = false;

      const survivor = await suite.start(['worker', '--concurrency', '2'], { env: crashEnv });
      let summary: Summary | undefined;
      try {
        await waitFor(
          'the job to complete on the second worker',
          async () => {
            if (survivor.child.exitCode !== null) throw new Error(`the second worker exited (${survivor.child.exitCode}):\n${survivor.stderr()}`);
            summary = parseSingleJson<Summary>((await suite.run(['status', JOB_ID, '--json'], { env: crashEnv })).stdout);
            return summary.status === 'completed';
          },
          60_000,
          1000,
        ).catch((error: Error) => {
          throw new Error(`${error.message}\nlast status: ${JSON.stringify(summary)}\nsecond worker stderr:\n${survivor.stderr().slice(-4000)}`);
        });
      } finally {
        if (survivor.child.exitCode === null) survivor.child.kill('SIGTERM');
      }
      const ended = await survivor.exited;
      expect(ended.code, ended.stderr.slice(-3000)).toBe(0);
      expect(jobsTaken(ended.stderr).has(JOB_ID)).toBe(true);

      const s = summary as Summary;
      expect(s).toMatchObject({ status: 'completed', totalImages: TOTAL, deliveredImages: TOTAL, credits: { reserved: TOTAL, captured: TOTAL, released: 0 } });
      expect(new Set(s.attachIds).size).toBe(TOTAL);
      // Resumed, not restarted: the second worker called only for the slots not yet filled.
      expect(flaky.calls() - callsBefore).toBe(TOTAL - committedAtKill);
      const files = await generatedFiles(storage, JOB_ID);
      expect(files.filter((f) => !/(^|\/)\.tmp-/.test(f))).toHaveLength(TOTAL);
      expect(new Set(await stampsOnDisk(storage, JOB_ID)).size).toBe(TOTAL);
      const view = await readDb(suite.database, JOB_ID, USER);
      expect(view.attachments.map((a) => a.id)).toEqual(s.attachIds);
      expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
      expect(view.ledger.filter((l) => l.kind === 'capture')).toHaveLength(TOTAL);
      expect(view.balance).toEqual({ balance: 40 - TOTAL, reserved: 0 });
    } finally {
      await flaky.close();
    }
  });

  it('SIGTERM on a worker mid-job: in-flight attempts finish, it exits 0, the job goes back to the queue and another worker finishes it exactly', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-sigterm';
    const JOB_ID = 'e2e-pg-worker-sigterm';
    const TOTAL = 16;
    // Calls after the 4th are held until the test has sent SIGTERM: the first worker is surely mid-job then.
    let termSent!: () => void;
    const afterTerm = new Promise<void>((r) => (termSent = r));
    const slow = await startFakeGeminiServer({ latencyMs: 100, hold: ({ n }) => (n > 4 ? afterTerm : undefined) });
    try {
      const termEnv = { ...suite.env, GEMINI_BASE_URL: slow.url, IMAGEGEN_QUEUE_EXPIRE_SECONDS: '4', IMAGEGEN_STAGE_CONCURRENCY: '2', IMAGEGEN_CONCURRENCY: '2' };
      await suite.grant(USER, 40, { env: termEnv });
      const file = await suite.ws.writeJob('worker-sigterm.json', jobSpec(JOB_ID, USER, [['first', 8], ['second', 8]]));
      expect((await suite.run(['submit', file], { env: termEnv })).code).toBe(0);

      const first = await suite.start(['worker'], { env: termEnv });
      const storage = join(suite.ws.dataDir, 'storage');
      await waitFor('the first worker to store a few images', async () => (await generatedFiles(storage, JOB_ID)).length >= 3 || first.child.exitCode !== null, 60_000);
      first.child.kill('SIGTERM');
      termSent();
      const stopped = await first.exited;
      expect(stopped.code, stopped.stderr.slice(-3000)).toBe(0);
      expect(stopped.stderr).toContain('job handed back for resume');
      // The signal said in the worker's log; its stderr is JSON log lines only.
      expect(logLines(stopped.stderr, 'signal received: finishing in-flight attempts')).toEqual([expect.objectContaining({ level: 30, signal: 'SIGTERM' })]);
      expect(textLines(stopped.stderr)).toEqual([]);
      const midway = parseSingleJson<Summary>((await suite.run(['status', JOB_ID, '--json'], { env: termEnv })).stdout);
      expect(midway.status).toBe('queued');
      expect(midway.deliveredImages).toBeGreaterThanOrEqual(3);
      expect(midway.deliveredImages).toBeLessThan(TOTAL);
      // Nothing was aborted: every started attempt ended (delivered), so no slot is half-spent.
      expect(midway.attempts.failed).toBe(0);
      expect(midway.attempts.total).toBe(midway.deliveredImages);

      const second = await suite.start(['worker'], { env: termEnv });
      let summary: Summary | undefined;
      try {
        await waitFor('the job to complete on the second worker', async () => {
          summary = parseSingleJson<Summary>((await suite.run(['status', JOB_ID, '--json'], { env: termEnv })).stdout);
          return summary.status === 'completed';
        }, 60_000, 500);
      } finally {
        if (second.child.exitCode === null) second.child.kill('SIGTERM');
      }
      expect((await second.exited).code).toBe(0);
      const s = summary as Summary;
      expect(s).toMatchObject({ deliveredImages: TOTAL, credits: { reserved: TOTAL, captured: TOTAL, released: 0 } });
      expect(slow.calls()).toBe(TOTAL);
      expect(new Set(await stampsOnDisk(storage, JOB_ID)).size).toBe(TOTAL);
      const view = await readDb(suite.database, JOB_ID, USER);
      expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
      expect(view.balance).toEqual({ balance: 40 - TOTAL, reserved: 0 });
    } finally {
      await slow.close();
    }
  });
});
