/**
 * `IMAGEGEN_WORKER_JOBS`: the jobs one `imagegen worker` runs at once, asserted
 * through the real CLI on PostgreSQL (child processes compiled from src by the
 * CLI harness, test/support/cli.ts) against a fake Gemini server that holds every call.
 *
 * Each job's stage prompt names the job, so the calls in flight say which jobs the
 * worker is running. The server records, at the arrival of every call, how many
 * distinct jobs have calls in flight.
 *
 * - WORKER_JOBS=2, 3 jobs queued: calls of exactly 2 jobs arrive and are held (2 per
 *   job: IMAGEGEN_STAGE_CONCURRENCY=2, and IMAGEGEN_CONCURRENCY=8 leaves room for a
 *   third job's calls); while held, the third job stays in the queue (pg-boss state
 *   `created`) for a look of several polling periods (a worker polls every 0.5 s; this
 *   bounds how long the test looks, it is not a verdict on timing); released, all 3
 *   complete; never 3 jobs in flight.
 * - WORKER_JOBS=3 (the control: the variable is read, not the default of 2, and the
 *   observation above can see a third job): 3 jobs queued, calls of all 3 arrive held.
 *
 * Skipped, saying why, when DATABASE_URL is not set.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { createScratchDatabase, TEST_DATABASE_URL, type ScratchDatabase } from '../support/databases.js';
import { logLines, runCli, startCli, waitFor, type CliProcess } from '../support/cli.js';

if (!TEST_DATABASE_URL) console.warn('worker-jobs: skipped: DATABASE_URL is not set (it needs PostgreSQL for the pg-boss queue)');

const QUANTITY = 2;
const PROMPT_PREFIX = 'worker-jobs prompt of ';

/** Polls `condition` every 20 ms until it holds; the 60 s deadline only guards against a hang. */
const until = (condition: () => boolean | Promise<boolean>, what: string): Promise<void> => waitFor(what, condition, 60_000, 20);

describe.skipIf(!TEST_DATABASE_URL)('IMAGEGEN_WORKER_JOBS: jobs one worker runs at once [postgres]', () => {
  let server: FakeGeminiServer;
  let scratch: ScratchDatabase;
  let admin: pg.Client;
  let dir: string;
  let env: Record<string, string>;
  let holding = true;
  let releaseGate: () => void = () => {};
  let gate: Promise<void> = Promise.resolve();
  /** Per call arrival: the distinct jobs with calls in flight (this one included). */
  const distinctAtArrival: { jobs: string[] }[] = [];
  const workers: CliProcess[] = [];

  const jobOf = (prompt: string | undefined): string => (prompt ?? '').slice(PROMPT_PREFIX.length);
  const inFlightJobs = (): Set<string> => new Set(server.requests.filter((r) => r.outcome === 'pending').map((r) => jobOf(r.prompt)));
  const callsOf = (jobId: string) => server.requests.filter((r) => jobOf(r.prompt) === jobId);

  function hold(): void {
    holding = true;
    gate = new Promise<void>((resolve) => (releaseGate = resolve));
  }
  function release(): void {
    holding = false;
    releaseGate();
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imagegen-worker-jobs-'));
    scratch = await createScratchDatabase('postgres');
    admin = new pg.Client({ connectionString: scratch.config.databaseUrl as string });
    await admin.connect();
    server = await startFakeGeminiServer({
      imageSize: 32,
      hold: () => {
        distinctAtArrival.push({ jobs: [...inFlightJobs()].sort() });
        return holding ? gate : undefined;
      },
    });
    env = {
      DATABASE_URL: scratch.config.databaseUrl as string,
      IMAGEGEN_DATA_DIR: join(dir, 'data'),
      IMAGEGEN_PROVIDER: 'gemini',
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      IMAGEGEN_CONCURRENCY: '8',
      // Each worker's own provider limit (8 from its start), not the fleet's shared one: the
      // shared limit starts at half a worker's concurrency and grows with the successes the
      // previous test's worker got to report before it stopped (timing), so with it the third
      // job's calls had room or not depending on that history (the stressed loop of issue 10
      // saw the control time out at a limit of 4: jobs a and b held all 4 permits).
      IMAGEGEN_PROVIDER_LIMIT_SCOPE: 'process',
      IMAGEGEN_STAGE_CONCURRENCY: '2',
      // Held calls must not time out while the test looks.
      IMAGEGEN_ATTEMPT_TIMEOUT_MS: '60000',
      GEMINI_TIMEOUT_MS: '60000',
      IMAGEGEN_BACKOFF_BASE_MS: '5',
      IMAGEGEN_BACKOFF_MAX_MS: '20',
      IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
      IMAGEGEN_SHUTDOWN_GRACE_MS: '5000',
      IMAGEGEN_LOG_LEVEL: 'info',
    };
    await writeFile(join(dir, 'in.png'), await renderStampedPng({ stamp: 11, width: 32, height: 32 }));
    const grant = await runCli(['credits', 'grant', 'wj-user', '100'], { env, cwd: dir });
    expect({ code: grant.code, stderr: grant.stderr.slice(-500) }).toMatchObject({ code: 0 });
  }, 120_000);

  afterEach(async () => {
    release();
    for (const worker of workers.splice(0)) {
      if (worker.child.exitCode === null && worker.child.signalCode === null) {
        worker.child.kill('SIGKILL');
        await worker.exited;
      }
    }
  });

  afterAll(async () => {
    release();
    await admin?.end();
    await server?.close();
    await scratch?.dispose();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Submits jobs `ids` with `imagegen submit`, one after the other. */
  async function submit(ids: readonly string[]): Promise<void> {
    for (const jobId of ids) {
      const file = join(dir, `${jobId}.json`);
      await writeFile(file, JSON.stringify({ jobId, userId: 'wj-user', stages: [{ quantity: QUANTITY, prompt: `${PROMPT_PREFIX}${jobId}`, 'aspect-ratio': '1:1', inputImage: 'in.png' }] }));
      const result = await runCli(['submit', file, '--json'], { env, cwd: dir });
      expect({ code: result.code, stdout: result.stdout.trim(), stderr: result.stderr.slice(-500) }).toMatchObject({ code: 0, stdout: JSON.stringify({ jobId, created: true }) });
    }
  }

  async function jobRows(ids: readonly string[]): Promise<Record<string, { status: string; delivered: number }>> {
    const { rows } = await admin.query<{ id: string; status: string; delivered: number }>('select id, status, delivered from jobs where id = any($1)', [ids]);
    return Object.fromEntries(rows.map((r) => [r.id, { status: r.status, delivered: Number(r.delivered) }]));
  }

  /** pg-boss state of each job's queue entry. */
  async function queueStates(ids: readonly string[]): Promise<Record<string, string>> {
    const { rows } = await admin.query<{ job_id: string; state: string }>(`select data->>'jobId' as job_id, state from imagegen_queue.job where data->>'jobId' = any($1)`, [ids]);
    return Object.fromEntries(rows.map((r) => [r.job_id, r.state]));
  }

  async function startWorker(workerJobs: number): Promise<CliProcess> {
    const worker = await startCli(['worker'], { env: { ...env, IMAGEGEN_WORKER_JOBS: String(workerJobs) }, cwd: dir });
    workers.push(worker);
    return worker;
  }

  async function stopWorker(worker: CliProcess): Promise<void> {
    worker.child.kill('SIGTERM');
    const exit = await worker.exited;
    expect({ code: exit.code, signal: exit.signal, stderr: exit.stderr.slice(-800) }).toMatchObject({ code: 0, signal: null });
  }

  it('IMAGEGEN_WORKER_JOBS=2 with 3 jobs queued: calls of exactly 2 jobs in flight, never 3; released, all 3 complete', async () => {
    const ids = ['wj2-a', 'wj2-b', 'wj2-c'];
    await submit(ids);
    const arrivalsBefore = distinctAtArrival.length;
    hold();
    const worker = await startWorker(2);
    let exited = false;
    void worker.exited.then(() => (exited = true));

    // Two jobs, each with its full stage concurrency held in flight.
    await until(() => exited || server.requests.filter((r) => r.outcome === 'pending').length >= 2 * QUANTITY, 'calls of two jobs in flight');
    expect(exited, worker.stderr().slice(-800)).toBe(false);
    const running = [...inFlightJobs()].sort();
    expect(running).toHaveLength(2);
    const third = ids.find((id) => !running.includes(id)) as string;
    expect(logLines(worker.stderr(), 'worker started')[0]).toMatchObject({ jobConcurrency: 2, globalConcurrency: 8 });

    // Look for several polling periods of the idle worker: the third job stays queued.
    for (let look = 0; look < 8; look++) {
      await new Promise((r) => setTimeout(r, 250));
      expect(inFlightJobs().size).toBe(2);
      expect((await queueStates([third]))[third]).toBe('created');
    }
    expect(callsOf(third)).toHaveLength(0);
    expect(logLines(worker.stderr(), 'job taken').map((e) => e['jobId']).sort()).toEqual(running);

    release();
    await until(async () => Object.values(await jobRows(ids)).filter((j) => j.status === 'completed').length === 3, 'all 3 jobs completed');
    expect(await jobRows(ids)).toEqual(Object.fromEntries(ids.map((id) => [id, { status: 'completed', delivered: QUANTITY }])));
    // Each job taken once, unless its run failed (a starved process on a loaded machine: the
    // stressed loop of issue 10 saw one) and the worker took it again after the lease TTL,
    // as a worker must: then the failure is in the log before the second take, and the job's
    // calls are those of both runs (still delivered exactly QUANTITY, checked above).
    const taken = logLines(worker.stderr(), 'job taken').map((e) => String(e['jobId']));
    const failedRuns = logLines(worker.stderr(), 'run failed; the job stays resumable (another worker takes it after the lease TTL)').map((e) => String(e['jobId']));
    expect([...new Set(taken)].sort()).toEqual(ids);
    for (const id of ids) {
      const takes = taken.filter((jobId) => jobId === id).length;
      expect(takes - 1, `${id} taken ${takes} times; the worker's log:\n${worker.stderr().slice(-3000)}`).toBeLessThanOrEqual(failedRuns.filter((jobId) => jobId === id).length);
      if (takes === 1) expect(callsOf(id)).toHaveLength(QUANTITY);
      else expect(callsOf(id).length).toBeGreaterThanOrEqual(QUANTITY);
    }
    if (taken.length > ids.length) console.warn(`worker-jobs: a run failed and was taken again: ${worker.stderr().split('\n').filter((line) => line.includes('run failed')).join('\n')}`);

    // Never 3 jobs with calls in flight at once, at any arrival of this run.
    const seen = distinctAtArrival.slice(arrivalsBefore);
    expect(seen).toHaveLength(ids.reduce((calls, id) => calls + callsOf(id).length, 0));
    expect(Math.max(...seen.map((s) => s.jobs.length))).toBe(2);
    await stopWorker(worker);
  }, 120_000);

  it('control: IMAGEGEN_WORKER_JOBS=3 with 3 jobs queued runs all 3 at once (the variable is read, and a third job is seen)', async () => {
    const ids = ['wj3-a', 'wj3-b', 'wj3-c'];
    await submit(ids);
    hold();
    const worker = await startWorker(3);
    let exited = false;
    void worker.exited.then(() => (exited = true));
    await until(() => exited || logLines(worker.stderr(), 'worker started').length > 0, 'the worker to start');
    expect(logLines(worker.stderr(), 'worker started')[0], worker.stderr().slice(-800)).toMatchObject({ jobConcurrency: 3 });
    await until(() => exited || inFlightJobs().size === 3, 'calls of three jobs in flight');
    expect(exited, worker.stderr().slice(-800)).toBe(false);
    expect([...inFlightJobs()].sort()).toEqual(ids);
    release();
    await until(async () => Object.values(await jobRows(ids)).filter((j) => j.status === 'completed').length === 3, 'all 3 jobs completed');
    await stopWorker(worker);
  }, 120_000);
});
