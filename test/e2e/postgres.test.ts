/**
 * The CLI on PostgreSQL (`DATABASE_URL`): `submit` + two `worker` processes share
 * the pg-boss queue and finish every job exactly; `cancel` and `watch` work on a job
 * another process runs. Each suite creates its own database and drops it after.
 * Skipped, visibly, when `DATABASE_URL` is not set.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomMixBehavior, startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { createScratchDatabase, TEST_DATABASE_URL, type ScratchDatabase } from '../support/databases.js';
import {
  assertCliBuilt,
  cliEnv,
  createWorkspace,
  generatedFiles,
  jobSpec,
  killLiveCliProcesses,
  parseSingleJson,
  readDb,
  runCli,
  stampsOnDisk,
  startCli,
  waitFor,
  type CliProcess,
  type Summary,
  type Workspace,
} from './support/cli.js';

if (!TEST_DATABASE_URL) console.warn('e2e PostgreSQL leg skipped: DATABASE_URL not set');

/** jobIds a worker's stderr says it took (pino JSON lines `{"jobId":...,"msg":"job taken"}`). */
function jobsTaken(stderr: string): Set<string> {
  const taken = new Set<string>();
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const entry = JSON.parse(line) as { msg?: string; jobId?: string };
      if (entry.msg === 'job taken' && entry.jobId) taken.add(entry.jobId);
    } catch {
      // not a log line
    }
  }
  return taken;
}

describe.skipIf(!TEST_DATABASE_URL)('imagegen on PostgreSQL (DATABASE_URL set; skipped otherwise)', () => {
  let scratch: ScratchDatabase | undefined;
  let ws: Workspace;
  let server: FakeGeminiServer;
  /** For the cancel test: the first 4 calls answer, later ones hang, so the job is surely running when it is cancelled. */
  let stalling: FakeGeminiServer;
  let env: NodeJS.ProcessEnv;
  let databaseUrl: string;

  beforeAll(async () => {
    assertCliBuilt();
    scratch = await createScratchDatabase('postgres');
    databaseUrl = scratch.config.databaseUrl as string;
    ws = await createWorkspace();
    server = await startFakeGeminiServer({
      latencyMs: 100,
      behavior: randomMixBehavior({ seed: 5, failureRate: 0.15, classes: ['status:503', 'text_only'] }),
    });
    stalling = await startFakeGeminiServer({ latencyMs: ({ n }) => (n <= 4 ? 100 : 120_000) });
    env = cliEnv({
      DATABASE_URL: databaseUrl,
      // Storage stays a folder, shared by every process on this machine.
      IMAGEGEN_DATA_DIR: ws.dataDir,
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30',
      IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200',
      IMAGEGEN_QUEUE_EXPIRE_SECONDS: '30',
    });
  });

  afterAll(async () => {
    await killLiveCliProcesses();
    await server?.close();
    await stalling?.close();
    await ws?.dispose();
    // Fails if a CLI process left a connection open (they are all dead by now).
    await scratch?.dispose();
  });

  it('two worker processes share submitted jobs and finish them all exactly: no duplicate images, attach records or charges; SIGTERM exits 0', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-workers';
    const JOBS = ['e2e-pg-a', 'e2e-pg-b', 'e2e-pg-c'];
    const PER_JOB = 12;
    expect((await runCli(['credits', 'grant', USER, '100'], { env })).code).toBe(0);
    for (const jobId of JOBS) {
      const file = await ws.writeJob(`${jobId}.json`, jobSpec(jobId, USER, [['left', 6], ['right', 6]]));
      const submit = await runCli(['submit', file], { env });
      expect(submit.code, submit.stderr).toBe(0);
      expect(submit.stdout).toContain(jobId);
    }
    // Submitting reserves at once; nothing is generated before a worker takes the job.
    expect(parseSingleJson((await runCli(['credits', 'balance', USER, '--json'], { env })).stdout)).toEqual({ userId: USER, balance: 100 - 3 * PER_JOB, reserved: 3 * PER_JOB });
    expect(server.calls()).toBe(0);

    // Each worker runs at most two jobs at once (its default), so three jobs need both, provided
    // neither finishes a job before the other took one: the provider holds every call until
    // both workers logged "job taken" (an event, not a head start measured in ms).
    let bothTook!: () => void;
    const gate = new Promise<void>((r) => (bothTook = r));
    server.setHold(() => gate);
    const workers: CliProcess[] = [startCli(['worker', '--concurrency', '3'], { env }), startCli(['worker', '--concurrency', '3'], { env })];
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
        server.setHold(undefined);
        bothTook();
      }
      await waitFor(
        'every submitted job to complete',
        async () => {
          for (const w of workers) if (w.child.exitCode !== null) throw new Error(`a worker exited early (${w.child.exitCode}):\n${w.stderr()}`);
          for (const jobId of JOBS) {
            if (summaries.get(jobId)?.status === 'completed') continue;
            const status = await runCli(['status', jobId, '--json'], { env });
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
    const ended = await Promise.all(workers.map((w) => w.done));
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
      const files = await generatedFiles(join(ws.dataDir, 'storage'), jobId);
      expect(files, jobId).toHaveLength(PER_JOB);
      allStamps.push(...(await stampsOnDisk(join(ws.dataDir, 'storage'), jobId)));
      const view = await readDb({ databaseUrl }, jobId, USER);
      expect(view.attachments.map((a) => a.id)).toEqual(s.attachIds);
      expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
      const captures = view.ledger.filter((l) => l.kind === 'capture');
      expect(new Set(captures.map((c) => c.attachId))).toEqual(new Set(s.attachIds));
      expect(captures).toHaveLength(PER_JOB);
    }
    expect(new Set(allIds).size).toBe(3 * PER_JOB);
    expect(new Set(allStamps).size).toBe(3 * PER_JOB);
    expect(attempts).toBe(server.calls());
    expect(parseSingleJson((await runCli(['credits', 'balance', USER, '--json'], { env })).stdout)).toEqual({ userId: USER, balance: 100 - 3 * PER_JOB, reserved: 0 });

    // stats --json: numbers from the attempts table, across every job.
    const stats = parseSingleJson<Record<string, unknown>>((await runCli(['stats', '--json'], { env })).stdout);
    expect(stats).toMatchObject({ attempts, delivered: 3 * PER_JOB, failed: attempts - 3 * PER_JOB });
    for (const key of ['attempts', 'failed', 'delivered', 'retries', 'retriesDelivered']) expect(typeof stats[key], key).toBe('number');
  });

  it('cancel from another process stops a running job: it ends cancelled (exit 1), only delivered images are charged, the rest released; watch follows it to the end', { timeout: 120_000 }, async () => {
    const USER = 'user-pg-cancel';
    const JOB_ID = 'e2e-pg-cancel';
    expect((await runCli(['credits', 'grant', USER, '50'], { env })).code).toBe(0);
    const file = await ws.writeJob('cancel.json', jobSpec(JOB_ID, USER, [['slow', 20], ['slower', 20]]));
    const run = startCli(['run', file, '--json', '--concurrency', '2'], { env: { ...env, GEMINI_BASE_URL: stalling.url, IMAGEGEN_STAGE_CONCURRENCY: '1' } });
    // The 4 answered calls' deliveries committed (their rows, not their files, which are
    // stored before the commit), and the next calls hang: nothing more can be delivered.
    await waitFor(
      '4 committed deliveries, then hanging calls',
      async () => (stalling.calls() > 4 && (await readDb({ databaseUrl }, JOB_ID, USER)).attachments.length >= 4) || run.child.exitCode !== null,
      60_000,
      200,
    );
    expect(run.child.exitCode, run.stderr()).toBeNull();

    const watch = startCli(['watch', JOB_ID, '--json'], { env });
    await waitFor('the watcher snapshot', () => watch.stdout().includes('"snapshot"') || watch.child.exitCode !== null, 20_000);
    const cancel = await runCli(['cancel', JOB_ID], { env });
    expect(cancel.code, cancel.stderr).toBe(0);

    const ended = await run.done;
    expect(ended.code, ended.stderr).toBe(1);
    const summary = parseSingleJson<Summary>(ended.stdout);
    expect(summary.status).toBe('cancelled');
    // The 4 answered calls were delivered; the hanging ones were aborted, never charged.
    expect(summary.deliveredImages).toBe(4);
    expect((await readDb({ databaseUrl }, JOB_ID, USER)).attachments.map((a) => a.id)).toEqual(summary.attachIds);
    expect(summary.credits).toEqual({ reserved: 40, captured: summary.deliveredImages, released: 40 - summary.deliveredImages });
    expect(await generatedFiles(join(ws.dataDir, 'storage'), JOB_ID)).toHaveLength(summary.deliveredImages);
    expect(parseSingleJson((await runCli(['credits', 'balance', USER, '--json'], { env })).stdout)).toEqual({ userId: USER, balance: 50 - summary.deliveredImages, reserved: 0 });

    const watched = await watch.done;
    expect(watched.code, watched.stderr).toBe(1);
    const events = watched.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { type: string; status?: string });
    expect(events[0]?.type).toBe('snapshot');
    expect(events.at(-1)).toMatchObject({ type: 'job:finished', status: 'cancelled' });
  });

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
      const crashEnv = { ...env, GEMINI_BASE_URL: flaky.url, IMAGEGEN_QUEUE_EXPIRE_SECONDS: '4' };
      expect((await runCli(['credits', 'grant', USER, '40'], { env: crashEnv })).code).toBe(0);
      const file = await ws.writeJob('worker-crash.json', jobSpec(JOB_ID, USER, [['first', 8], ['second', 8]]));
      expect((await runCli(['submit', file], { env: crashEnv })).code).toBe(0);

      const doomed = startCli(['worker', '--concurrency', '2'], { env: crashEnv });
      const storage = join(ws.dataDir, 'storage');
      // Committed deliveries (rows), not files (stored before the commit): the kill then surely leaves work done.
      await waitFor(
        'the first worker to commit deliveries, then hang',
        async () =>
          (jobsTaken(doomed.stderr()).has(JOB_ID) && flaky.calls() > 6 && (await readDb({ databaseUrl }, JOB_ID, USER)).attachments.length >= 4) ||
          doomed.child.exitCode !== null,
        60_000,
        200,
      );
      expect(doomed.child.exitCode, doomed.stderr()).toBeNull();
      doomed.child.kill('SIGKILL');
      expect((await doomed.done).signal).toBe('SIGKILL');
      const committedAtKill = (await readDb({ databaseUrl }, JOB_ID, USER)).attachments.length;
      expect(committedAtKill).toBeGreaterThanOrEqual(4);
      const callsBefore = flaky.calls();
      stalled = false;

      const survivor = startCli(['worker', '--concurrency', '2'], { env: crashEnv });
      let summary: Summary | undefined;
      try {
        await waitFor(
          'the job to complete on the second worker',
          async () => {
            if (survivor.child.exitCode !== null) throw new Error(`the second worker exited (${survivor.child.exitCode}):\n${survivor.stderr()}`);
            summary = parseSingleJson<Summary>((await runCli(['status', JOB_ID, '--json'], { env: crashEnv })).stdout);
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
      const ended = await survivor.done;
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
      const view = await readDb({ databaseUrl }, JOB_ID, USER);
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
      const termEnv = { ...env, GEMINI_BASE_URL: slow.url, IMAGEGEN_QUEUE_EXPIRE_SECONDS: '4', IMAGEGEN_STAGE_CONCURRENCY: '2', IMAGEGEN_CONCURRENCY: '2' };
      expect((await runCli(['credits', 'grant', USER, '40'], { env: termEnv })).code).toBe(0);
      const file = await ws.writeJob('worker-sigterm.json', jobSpec(JOB_ID, USER, [['first', 8], ['second', 8]]));
      expect((await runCli(['submit', file], { env: termEnv })).code).toBe(0);

      const first = startCli(['worker'], { env: termEnv });
      const storage = join(ws.dataDir, 'storage');
      await waitFor('the first worker to store a few images', async () => (await generatedFiles(storage, JOB_ID)).length >= 3 || first.child.exitCode !== null, 60_000);
      first.child.kill('SIGTERM');
      termSent();
      const stopped = await first.done;
      expect(stopped.code, stopped.stderr.slice(-3000)).toBe(0);
      expect(stopped.stderr).toContain('job handed back for resume');
      const midway = parseSingleJson<Summary>((await runCli(['status', JOB_ID, '--json'], { env: termEnv })).stdout);
      expect(midway.status).toBe('queued');
      expect(midway.deliveredImages).toBeGreaterThanOrEqual(3);
      expect(midway.deliveredImages).toBeLessThan(TOTAL);
      // Nothing was aborted: every started attempt ended (delivered), so no slot is half-spent.
      expect(midway.attempts.failed).toBe(0);
      expect(midway.attempts.total).toBe(midway.deliveredImages);

      const second = startCli(['worker'], { env: termEnv });
      let summary: Summary | undefined;
      try {
        await waitFor('the job to complete on the second worker', async () => {
          summary = parseSingleJson<Summary>((await runCli(['status', JOB_ID, '--json'], { env: termEnv })).stdout);
          return summary.status === 'completed';
        }, 60_000, 500);
      } finally {
        if (second.child.exitCode === null) second.child.kill('SIGTERM');
      }
      expect((await second.done).code).toBe(0);
      const s = summary as Summary;
      expect(s).toMatchObject({ deliveredImages: TOTAL, credits: { reserved: TOTAL, captured: TOTAL, released: 0 } });
      expect(slow.calls()).toBe(TOTAL);
      expect(new Set(await stampsOnDisk(storage, JOB_ID)).size).toBe(TOTAL);
      const view = await readDb({ databaseUrl }, JOB_ID, USER);
      expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
      expect(view.balance).toEqual({ balance: 40 - TOTAL, reserved: 0 });
    } finally {
      await slow.close();
    }
  });
});
