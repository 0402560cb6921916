/**
 * Batch mode (issue 17) with real processes killed with SIGKILL during a batch round: the
 * batch is durable (its name and requests stored before the create returns), so the run
 * that takes the job over polls the SAME batch and sends no second one for its slots.
 *
 * - PostgreSQL (`DATABASE_URL`; skipped, visibly, without it): two `imagegen worker`
 *   processes with a short lease TTL; the one holding the job is SIGKILLed while the fake
 *   server holds its batch RUNNING; the other takes the job over, polls that batch, and
 *   once the test releases it, finishes the job exact (round 2 carries the two responses
 *   the batch left missing).
 * - PGlite: `imagegen run job.json` SIGKILLed while its batch runs, then run again: it
 *   resumes polling the same batch; and SIGKILLed while the create's answer had not come
 *   (the batch exists, its name was never stored): the next run finds it by its display
 *   name instead of creating a second one.
 *
 * The built CLI (`dist/cli.js`, checked fresh) runs against the Gemini-protocol test
 * server in this process. Batches end only when the test releases them and every wait is
 * for an event (a server record, a log line, a row): no verdict depends on the wall clock.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openDatabase, readJobResult, type Database } from '../../src/db/index.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { jobsTaken, logLines, stopWorkers, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { fleetOf } from '../support/fleet.js';
import { jobSpec, parseSingleJson, pgliteOf, readDb, stampsOnDisk, type Summary } from '../support/cli-workspace.js';

/** Generous: a loaded 2-core machine; a wait that runs out names what it waited for. */
const WAIT_MS = 90_000;
/** A fast poll of running batches (the default is 5 s, doubling). */
const BATCH_ENV = { IMAGEGEN_BATCH_POLL_MS: '100', IMAGEGEN_BATCH_POLL_MAX_MS: '400' } as const;

/** The `--json` summary with the batch fields. */
type BatchSummary = Summary & {
  mode: string;
  stages: (Summary['stages'][number] & { mode: string; rounds?: { round: number; batch: string | null; state: string; requests: number; delivered: number; failed: number; error: string | null }[] })[];
};

/** A promise the test resolves: holds batches RUNNING at the fake server until `release()`. */
function hold(): { readonly promise: Promise<void>; release(): void } {
  let release!: () => void;
  const promise = new Promise<void>((resolve) => (release = resolve));
  return { promise, release };
}

/** `jobId/stage/slot/attempt` -> its parts. */
function partsOf(key: string | undefined): { stage: number; slot: number; attempt: number } {
  const m = /\/(\d+)\/(\d+)\/(\d+)$/.exec(key ?? '');
  if (!m) throw new Error(`not a batch request key: ${key}`);
  return { stage: Number(m[1]), slot: Number(m[2]), attempt: Number(m[3]) };
}

/** Whether the job has ended (any final status): a wait for progress stops there instead of running out. */
async function ended(database: Database, jobId: string): Promise<boolean> {
  const status = (await readJobResult(database, jobId))?.rowStatus;
  return status === 'completed' || status === 'partial' || status === 'failed' || status === 'cancelled';
}

/** Kills (SIGKILL) a CLI process a failed test left running, so the next test finds the embedded database free. */
async function killIfRunning(proc: CliProcess): Promise<void> {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return;
  proc.child.kill('SIGKILL');
  await proc.exited;
}

/** The stamps the server served in its batches' answers. */
function servedStamps(server: FakeGeminiServer): Set<number> {
  return new Set(server.batches.flatMap((b) => b.requests.map((q) => q.servedStamp)).filter((s): s is number => s !== undefined));
}

/** Exact: every image once, one reservation, one capture per image, the rest of the balance untouched. */
async function expectExact(suite: CliSuite, summary: BatchSummary, jobId: string, userId: string, total: number, granted: number, server: FakeGeminiServer): Promise<void> {
  expect(summary).toMatchObject({ jobId, status: 'completed', mode: 'batch', totalImages: total, deliveredImages: total, credits: { reserved: total, captured: total, released: 0 } });
  const view = await readDb(suite.database, jobId, userId);
  expect(view.attachments).toHaveLength(total);
  expect(new Set(view.attachments.map((a) => `${a.stage}/${a.slot}`)).size).toBe(total);
  expect(view.attachments.map((a) => a.id)).toEqual(summary.attachIds);
  expect(view.ledger.filter((l) => l.kind === 'reserve')).toHaveLength(1);
  expect(view.ledger.filter((l) => l.kind === 'capture')).toHaveLength(total);
  expect(new Set(view.ledger.filter((l) => l.kind === 'capture').map((l) => l.attachId))).toEqual(new Set(summary.attachIds));
  expect(view.balance).toEqual({ balance: granted - total, reserved: 0 });
  // Every stored image is a distinct one the server served in a batch answer.
  const stamps = await stampsOnDisk(join(suite.ws.dataDir, 'storage'), jobId);
  expect(stamps).toHaveLength(total);
  expect(new Set(stamps).size).toBe(total);
  const served = servedStamps(server);
  for (const s of stamps) expect(served.has(s), `stamp ${s} was served in a batch`).toBe(true);
}

if (!TEST_DATABASE_URL) console.warn('e2e batch takeover tests (worker fleet) skipped: DATABASE_URL not set');

describe.skipIf(!TEST_DATABASE_URL)('batch mode: a worker SIGKILLed during a round, on PostgreSQL (DATABASE_URL set; skipped otherwise)', () => {
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({ postgres: true, env: { ...BATCH_ENV } });
  });
  afterAll(() => suite?.close());

  it('the worker holding a batch job is SIGKILLed while its batch runs: the other worker takes the job over, polls the same batch (no second batch for its slots), and the job ends exact', { timeout: 240_000 }, async () => {
    const USER = 'batch-takeover';
    const JOB = 'batch-takeover-job';
    const TOTAL = 10;
    const GRANTED = 30;
    /** Requests of the first batch answered with nothing: round 2 (sent by the survivor) carries them. */
    const MISSING = [2, 7];
    const running = hold();
    const server = await startFakeGeminiServer({
      batchPlan: () => ({ hold: running.promise }),
      batchBehavior: ({ batch, index }) => (batch === 1 && MISSING.includes(index) ? 'missing' : 'image'),
    });
    const fleet = fleetOf(suite);
    const env = { IMAGEGEN_LEASE_TTL_SECONDS: '3' };
    const workers: CliProcess[] = [];
    const database: Database = await openDatabase(suite.database);
    try {
      await suite.grant(USER, GRANTED);
      await fleet.submit(JOB, USER, [['a catalogue page, batched', TOTAL]], server, { mode: 'batch' });
      for (const name of ['batch-a', 'batch-b']) workers.push(await fleet.worker(name, server, env, ['--concurrency', '2']));
      await waitFor('a worker to take the job', () => workers.some((w) => jobsTaken(w.stderr()).has(JOB)), WAIT_MS, 100);
      const doomed = workers.find((w) => jobsTaken(w.stderr()).has(JOB)) as CliProcess;
      const survivor = workers.find((w) => w !== doomed) as CliProcess;
      // Its batch is at the provider, and being polled (so its name is stored): the round is under way.
      await waitFor('the batch created and polled', () => server.batches.length === 1 && (server.batches[0]?.gets ?? 0) >= 1, WAIT_MS, 50);
      const batch = server.batches[0];
      expect(batch?.state).toBe('BATCH_STATE_RUNNING');
      expect(batch?.requests.map((q) => partsOf(q.key))).toEqual(Array.from({ length: TOTAL }, (_, slot) => ({ stage: 0, slot, attempt: 1 })));
      const stored = await database.db.selectFrom('batches').select(['round', 'name']).where('job_id', '=', JOB).execute();
      expect(stored).toEqual([{ round: 1, name: batch?.name }]);
      // The doomed worker still holds it: nobody else took it meanwhile.
      expect(jobsTaken(survivor.stderr()).has(JOB)).toBe(false);
      const doomedId = String(logLines(doomed.stderr(), 'worker started')[0]?.['worker']);
      expect((await fleet.status(JOB)).runner).toMatchObject({ id: doomedId, pid: doomed.child.pid });

      doomed.child.kill('SIGKILL');
      expect((await doomed.exited).signal).toBe('SIGKILL');

      await waitFor('the other worker to take the job over', () => jobsTaken(survivor.stderr()).has(JOB), WAIT_MS, 100);
      expect(logLines(survivor.stderr(), 'job taken').find((e) => e['jobId'] === JOB)).toMatchObject({ via: 'takeover', previousOwner: doomedId });
      // It resumes the batch the dead worker sent, by its stored name.
      await waitFor('the survivor to resume the open batch', () => logLines(survivor.stderr(), 'resuming batches an earlier run sent').length > 0, WAIT_MS, 100);
      const resumed = logLines(survivor.stderr(), 'resuming batches an earlier run sent')[0];
      expect(resumed?.['batches']).toEqual([{ stage: 0, round: 1, batch: batch?.name, requests: TOTAL }]);
      // Polled again (by the survivor: the other one is dead), not sent again.
      const getsAtTakeover = batch?.gets ?? 0;
      await waitFor('the survivor to poll the batch (or send another, or end the job)', async () => (batch?.gets ?? 0) > getsAtTakeover || server.batches.length > 1 || (await ended(database, JOB)), WAIT_MS, 50);
      expect(server.batches, 'no second batch for the same slots').toHaveLength(1);
      expect(server.batchCalls().create).toBe(1);

      expect(await ended(database, JOB), 'the job still runs on the survivor').toBe(false);
      running.release();
      await waitFor('the job to end', () => ended(database, JOB), WAIT_MS, 200);
      const summary = (await fleet.status(JOB)) as unknown as BatchSummary;
      await expectExact(suite, summary, JOB, USER, TOTAL, GRANTED, server);

      // Two batches in all: round 1 (every slot, attempt 1) and round 2, only the two slots round 1 left without an answer, at attempt 2.
      expect(server.batches).toHaveLength(2);
      expect(server.batchCalls().create).toBe(2);
      const round2 = server.batches[1]?.requests.map((q) => partsOf(q.key));
      expect(round2).toEqual(MISSING.map((slot) => ({ stage: 0, slot, attempt: 2 })));
      const keys = server.batches.flatMap((b) => b.requests.map((q) => q.key));
      expect(new Set(keys).size, 'no request key sent twice').toBe(keys.length);
      expect(summary.stages[0]?.mode).toBe('batch');
      expect(summary.stages[0]?.rounds).toEqual([
        { round: 1, batch: batch?.name, state: 'succeeded', requests: TOTAL, delivered: TOTAL - MISSING.length, failed: MISSING.length, error: null },
        { round: 2, batch: server.batches[1]?.name, state: 'succeeded', requests: MISSING.length, delivered: MISSING.length, failed: 0, error: null },
      ]);
      expect(summary.attempts).toMatchObject({ total: TOTAL + MISSING.length, failed: MISSING.length });
      // Every image came from the survivor's reading of the batches: the doomed one delivered nothing.
      expect(server.calls(), 'no interactive call').toBe(0);
    } finally {
      running.release();
      await database.close();
      await stopWorkers(workers);
      await server.close();
    }
  });
});

describe('batch mode: imagegen run SIGKILLed during a round, then run again (PGlite)', () => {
  const GRANTED = 20;
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({ env: { ...BATCH_ENV } });
  });
  afterAll(() => suite?.close());

  it('killed while its batch runs, `run` again resumes polling the same batch and ends exact without a second batch', { timeout: 240_000 }, async () => {
    const JOB = 'batch-run-kill';
    const USER = 'batch-run-kill-user';
    const TOTAL = 8;
    const running = hold();
    const server = await startFakeGeminiServer({ apiKey: suite.server.apiKey, batchPlan: () => ({ hold: running.promise }) });
    const env = { ...suite.env, GEMINI_BASE_URL: server.url };
    const started: CliProcess[] = [];
    try {
      await suite.grant(USER, GRANTED);
      const file = await suite.ws.writeJob(`${JOB}.json`, { ...(jobSpec(JOB, USER, [['a batched poster', TOTAL]]) as object), mode: 'batch' });
      const first = await suite.start(['run', file, '--json'], { env });
      started.push(first);
      await waitFor('the batch created and polled', () => (server.batches.length === 1 && (server.batches[0]?.gets ?? 0) >= 1) || first.child.exitCode !== null, WAIT_MS, 50);
      expect(first.child.exitCode, `the first run ended before it could be killed:\n${first.stderr()}`).toBeNull();
      const batch = server.batches[0];
      expect(batch?.state).toBe('BATCH_STATE_RUNNING');
      first.child.kill('SIGKILL');
      const killed = await first.exited;
      expect(killed.signal).toBe('SIGKILL');
      expect(killed.stdout).toBe('');

      const second = await suite.start(['run', file, '--json'], { env });
      started.push(second);
      const resumedLine = () => logLines(second.stderr(), 'resuming batches an earlier run sent');
      await waitFor('the second run to resume the open batch', () => resumedLine().length > 0 || second.child.exitCode !== null, WAIT_MS, 100);
      expect(resumedLine()[0]?.['batches'], second.stderr()).toEqual([{ stage: 0, round: 1, batch: batch?.name, requests: TOTAL }]);
      const getsAtResume = batch?.gets ?? 0;
      await waitFor('the second run to poll the batch (or send another)', () => (batch?.gets ?? 0) > getsAtResume || server.batches.length > 1 || second.child.exitCode !== null, WAIT_MS, 50);
      expect(server.batches, 'no second batch for the same slots').toHaveLength(1);
      running.release();
      const done = await second.exited;
      expect(done.code, done.stderr).toBe(0);

      expect(server.batches).toHaveLength(1);
      expect(server.batchCalls().create).toBe(1);
      const summary = parseSingleJson<BatchSummary>(done.stdout);
      expect(summary.stages[0]?.rounds).toEqual([{ round: 1, batch: batch?.name, state: 'succeeded', requests: TOTAL, delivered: TOTAL, failed: 0, error: null }]);
      expect(summary.attempts).toMatchObject({ total: TOTAL, failed: 0, abandoned: 0 });
      await expectExact(suite, summary, JOB, USER, TOTAL, GRANTED, server);
    } finally {
      running.release();
      for (const proc of started) await killIfRunning(proc);
      await server.close();
    }
  });

  it("killed while its create call had no answer yet (the batch exists, its name never stored), `run` again finds that batch by its display name instead of creating a second one", { timeout: 240_000 }, async () => {
    const JOB = 'batch-run-lost-create';
    const USER = 'batch-run-lost-user';
    const TOTAL = 6;
    // The first create makes the batch and never answers; any later create would be answered (and seen).
    const server = await startFakeGeminiServer({ apiKey: suite.server.apiKey, batchCreateBehavior: (n) => (n === 1 ? 'hang' : 'image') });
    const env = { ...suite.env, GEMINI_BASE_URL: server.url };
    const started: CliProcess[] = [];
    try {
      await suite.grant(USER, GRANTED);
      const file = await suite.ws.writeJob(`${JOB}.json`, { ...(jobSpec(JOB, USER, [['a batched postcard', TOTAL]]) as object), mode: 'batch' });
      const first = await suite.start(['run', file, '--json'], { env });
      started.push(first);
      await waitFor('the batch created at the provider', () => server.batches.length === 1 || first.child.exitCode !== null, WAIT_MS, 50);
      expect(first.child.exitCode, `the first run ended before it could be killed:\n${first.stderr()}`).toBeNull();
      first.child.kill('SIGKILL');
      expect((await first.exited).signal).toBe('SIGKILL');
      const batch = server.batches[0];
      expect(batch?.answerLost).toBe(true);
      expect(batch?.displayName).toBe(`imagegen/${JOB}/0/1`);
      // The round was stored before the call; its name never was.
      const database = await openDatabase(pgliteOf(suite.ws.dataDir));
      try {
        expect(await database.db.selectFrom('batches').select(['round', 'name', 'state', 'display_name']).where('job_id', '=', JOB).execute()).toEqual([
          { round: 1, name: null, state: 'submitting', display_name: batch?.displayName },
        ]);
      } finally {
        await database.close();
      }

      const done = await suite.run(['run', file, '--json'], { env, timeoutMs: WAIT_MS });
      expect(done.code, done.stderr).toBe(0);
      expect(server.batches, 'no second batch for the same slots').toHaveLength(1);
      expect(server.batchCalls().create).toBe(1);
      expect(server.batchCalls().list, 'looked up by its display name').toBeGreaterThanOrEqual(1);
      expect(batch?.state).toBe('BATCH_STATE_SUCCEEDED');
      const summary = parseSingleJson<BatchSummary>(done.stdout);
      expect(summary.stages[0]?.rounds).toEqual([{ round: 1, batch: batch?.name, state: 'succeeded', requests: TOTAL, delivered: TOTAL, failed: 0, error: null }]);
      await expectExact(suite, summary, JOB, USER, TOTAL, GRANTED, server);
    } finally {
      for (const proc of started) await killIfRunning(proc);
      await server.close();
    }
  });
});
