/**
 * The CLI on PostgreSQL (`DATABASE_URL`): `submit` + two `worker` processes share
 * the pg-boss queue and finish every job exactly; `cancel` and `watch` work on a job
 * another process runs. (Workers stopped mid-job: postgres-worker-stop.test.ts.)
 * Each suite creates its own database and drops it after. Skipped, visibly, when
 * `DATABASE_URL` is not set.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomMixBehavior, startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { jobsTaken, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { generatedFiles, jobSpec, parseSingleJson, readDb, stampsOnDisk, type Summary } from '../support/cli-workspace.js';

if (!TEST_DATABASE_URL) console.warn('e2e PostgreSQL leg skipped: DATABASE_URL not set');

describe.skipIf(!TEST_DATABASE_URL)('imagegen on PostgreSQL (DATABASE_URL set; skipped otherwise)', () => {
  let suite: CliSuite;
  /** For the cancel test: the first 4 calls answer, later ones hang, so the job is surely running when it is cancelled. */
  let stalling: FakeGeminiServer;

  beforeAll(async () => {
    suite = await openCliSuite({
      postgres: true,
      server: { latencyMs: 100, behavior: randomMixBehavior({ seed: 5, failureRate: 0.15, classes: ['status:503', 'text_only'] }) },
      // Storage stays a folder (the suite's data dir), shared by every process on this machine.
      env: { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200', IMAGEGEN_QUEUE_EXPIRE_SECONDS: '30' },
    });
    stalling = await startFakeGeminiServer({ latencyMs: ({ n }) => (n <= 4 ? 100 : 120_000) });
  });

  afterAll(async () => {
    // Fails if a CLI process left a connection open (they are all dead by then).
    await suite?.close();
    await stalling?.close();
  });

  it('two worker processes share submitted jobs and finish them all exactly: no duplicate images, attach records or charges; SIGTERM exits 0', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-workers';
    const JOBS = ['e2e-pg-a', 'e2e-pg-b', 'e2e-pg-c'];
    const PER_JOB = 12;
    await suite.grant(USER, 100);
    for (const jobId of JOBS) {
      const file = await suite.ws.writeJob(`${jobId}.json`, jobSpec(jobId, USER, [['left', 6], ['right', 6]]));
      const submit = await suite.run(['submit', file]);
      expect(submit.code, submit.stderr).toBe(0);
      expect(submit.stdout).toContain(jobId);
    }
    // Submitting reserves at once; nothing is generated before a worker takes the job.
    expect(parseSingleJson((await suite.run(['credits', 'balance', USER, '--json'])).stdout)).toEqual({ userId: USER, balance: 100 - 3 * PER_JOB, reserved: 3 * PER_JOB });
    expect(suite.server.calls()).toBe(0);

    // Each worker runs at most two jobs at once (its default), so three jobs need both, provided
    // neither finishes a job before the other took one: the provider holds every call until
    // both workers logged "job taken" (an event, not a head start measured in ms).
    let bothTook!: () => void;
    const gate = new Promise<void>((r) => (bothTook = r));
    suite.server.setHold(() => gate);
    const workers: CliProcess[] = [await suite.start(['worker', '--concurrency', '3']), await suite.start(['worker', '--concurrency', '3'])];
    const summaries = new Map<string, Summary>();
    try {
      try {
        await waitFor(
          'both workers to take a job',
          () => {
            for (const w of workers) if (w.child.exitCode !== null) throw new Error(`a worker exited early (${w.child.exitCode}):\n${w.stderr()}`);
            return workers.every((w) => jobsTaken(w.stderr()).size > 0);
          },
          60_000,
        );
      } finally {
        suite.server.setHold(undefined);
        bothTook();
      }
      await waitFor(
        'every submitted job to complete',
        async () => {
          for (const w of workers) if (w.child.exitCode !== null) throw new Error(`a worker exited early (${w.child.exitCode}):\n${w.stderr()}`);
          for (const jobId of JOBS) {
            if (summaries.get(jobId)?.status === 'completed') continue;
            const status = await suite.run(['status', jobId, '--json']);
            const summary = parseSingleJson<Summary>(status.stdout);
            if (['partial', 'failed', 'cancelled'].includes(summary.status)) throw new Error(`${jobId} ended ${summary.status}: ${status.stdout}`);
            summaries.set(jobId, summary);
          }
          return JOBS.every((j) => summaries.get(j)?.status === 'completed');
        },
        90_000,
        200,
      );
    } finally {
      for (const w of workers) if (w.child.exitCode === null) w.child.kill('SIGTERM');
    }
    const ended = await Promise.all(workers.map((w) => w.exited));
    for (const e of ended) expect(e.code, `worker exit after SIGTERM:\n${e.stderr.slice(-3000)}`).toBe(0);

    // Both workers took work, and between them every job.
    const taken = ended.map((e) => jobsTaken(e.stderr));
    expect(taken[0]?.size, 'worker 1 took a job').toBeGreaterThan(0);
    expect(taken[1]?.size, 'worker 2 took a job').toBeGreaterThan(0);
    expect(new Set([...(taken[0] ?? []), ...(taken[1] ?? [])])).toEqual(new Set(JOBS));

    // Exact counts, no duplicates across all jobs, one provider call per recorded attempt.
    const allIds: string[] = [];
    const allStamps: number[] = [];
    let attempts = 0;
    for (const jobId of JOBS) {
      const s = summaries.get(jobId) as Summary;
      expect(s).toMatchObject({ status: 'completed', totalImages: PER_JOB, deliveredImages: PER_JOB, credits: { reserved: PER_JOB, captured: PER_JOB, released: 0 } });
      expect(s.attachIds).toEqual(s.stages.flatMap((st) => st.attachIds));
      allIds.push(...s.attachIds);
      attempts += s.attempts.total;
      const files = await generatedFiles(join(suite.ws.dataDir, 'storage'), jobId);
      expect(files, jobId).toHaveLength(PER_JOB);
      allStamps.push(...(await stampsOnDisk(join(suite.ws.dataDir, 'storage'), jobId)));
      const view = await readDb(suite.database, jobId, USER);
      expect(view.attachments.map((a) => a.id)).toEqual(s.attachIds);
      expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
      const captures = view.ledger.filter((l) => l.kind === 'capture');
      expect(new Set(captures.map((c) => c.attachId))).toEqual(new Set(s.attachIds));
      expect(captures).toHaveLength(PER_JOB);
    }
    expect(new Set(allIds).size).toBe(3 * PER_JOB);
    expect(new Set(allStamps).size).toBe(3 * PER_JOB);
    expect(attempts).toBe(suite.server.calls());
    expect(parseSingleJson((await suite.run(['credits', 'balance', USER, '--json'])).stdout)).toEqual({ userId: USER, balance: 100 - 3 * PER_JOB, reserved: 0 });

    // stats --json: numbers from the attempts table, across every job.
    const stats = parseSingleJson<Record<string, unknown>>((await suite.run(['stats', '--json'])).stdout);
    expect(stats).toMatchObject({ attempts, delivered: 3 * PER_JOB, failed: attempts - 3 * PER_JOB });
    for (const key of ['attempts', 'failed', 'delivered', 'retries', 'retriesDelivered']) expect(typeof stats[key], key).toBe('number');
  });

  it('cancel from another process stops a running job: it ends cancelled (exit 1), only delivered images are charged, the rest released; watch follows it to the end', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-cancel';
    const JOB_ID = 'e2e-pg-cancel';
    await suite.grant(USER, 50);
    const file = await suite.ws.writeJob('cancel.json', jobSpec(JOB_ID, USER, [['slow', 20], ['slower', 20]]));
    const run = await suite.start(['run', file, '--json', '--concurrency', '2'], { env: { ...suite.env, GEMINI_BASE_URL: stalling.url, IMAGEGEN_STAGE_CONCURRENCY: '1' } });
    // The 4 answered calls' deliveries committed (their rows, not their files, which are
    // stored before the commit), and the next calls hang: nothing more can be delivered.
    await waitFor(
      '4 committed deliveries, then hanging calls',
      async () => (stalling.calls() > 4 && (await readDb(suite.database, JOB_ID, USER)).attachments.length >= 4) || run.child.exitCode !== null,
      60_000,
      200,
    );
    expect(run.child.exitCode, run.stderr()).toBeNull();

    const watch = await suite.start(['watch', JOB_ID, '--json']);
    await waitFor('the watcher snapshot', () => watch.stdout().includes('"snapshot"') || watch.child.exitCode !== null, 20_000);
    const cancel = await suite.run(['cancel', JOB_ID]);
    expect(cancel.code, cancel.stderr).toBe(0);

    const ended = await run.exited;
    expect(ended.code, ended.stderr).toBe(1);
    const summary = parseSingleJson<Summary>(ended.stdout);
    expect(summary.status).toBe('cancelled');
    // The 4 answered calls were delivered; the hanging ones were aborted, never charged.
    expect(summary.deliveredImages).toBe(4);
    expect((await readDb(suite.database, JOB_ID, USER)).attachments.map((a) => a.id)).toEqual(summary.attachIds);
    expect(summary.credits).toEqual({ reserved: 40, captured: summary.deliveredImages, released: 40 - summary.deliveredImages });
    expect(await generatedFiles(join(suite.ws.dataDir, 'storage'), JOB_ID)).toHaveLength(summary.deliveredImages);
    expect(parseSingleJson((await suite.run(['credits', 'balance', USER, '--json'])).stdout)).toEqual({ userId: USER, balance: 50 - summary.deliveredImages, reserved: 0 });

    const watched = await watch.exited;
    expect(watched.code, watched.stderr).toBe(1);
    const events = watched.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; status?: string });
    expect(events[0]?.type).toBe('snapshot');
    expect(events.at(-1)).toMatchObject({ type: 'job:finished', status: 'cancelled' });
  });
});
