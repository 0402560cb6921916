/**
 * A worker that loses its database (a network partition: its connections go through a TCP
 * proxy the test cuts; PostgreSQL itself stays up for everyone else), with real
 * `imagegen worker` processes on PostgreSQL:
 *
 * - a short loss (less than the lease TTL): the worker keeps its in-flight attempts, retries
 *   the connection with backoff, delivers what they produced once the database answers
 *   again, and finishes the job itself, exact;
 * - a long loss (more than the TTL): another worker takes the job over; the partitioned
 *   worker's attempts that were in flight are answered after the database came back and are
 *   not delivered (it no longer holds the slot's job); it stays up and heartbeats again; the
 *   job ends exact on the other worker.
 *
 * Skipped, visibly, when `DATABASE_URL` is not set.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { jobsTaken, stopWorkers, logLines, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { fleetOf, type FleetHelpers } from '../support/fleet.js';
import { parseSingleJson, readDb } from '../support/cli-workspace.js';
import { readStamp } from '../support/stamped-image.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';

if (!TEST_DATABASE_URL) console.warn('e2e fleet partition tests skipped: DATABASE_URL not set');

/** The worker's warnings and errors, one line each (for a failure message). */
function warnings(stderr: string): string {
  return stderr
    .split('\n')
    .filter((line) => /^\{.*("level":[4-6]0|"msg":"attempt failed")/.test(line))
    .map((line) => {
      const { level, msg, err, stage, slot, attempt, errorClass, message } = JSON.parse(line) as Record<string, unknown> & { err?: { message?: string } };
      return JSON.stringify({ level, msg, err: err?.message, stage, slot, attempt, errorClass, message });
    })
    .join('\n');
}

describe.skipIf(!TEST_DATABASE_URL)('a worker that loses its database (PostgreSQL behind a TCP proxy; skipped without DATABASE_URL)', () => {
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({ postgres: true, env: { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200' } });
  });
  afterAll(() => suite?.close());
  const worker = (name: string, server: FakeGeminiServer, env: Record<string, string>) => fleetOf(suite).worker(name, server, env, ['--concurrency', '4']);
  const submit: FleetHelpers['submit'] = (...a) => fleetOf(suite).submit(...a);
  const status: FleetHelpers['status'] = (jobId) => fleetOf(suite).status(jobId);

  /** The suite's database URL with host and port pointing at `proxy`. */
  function viaProxy(proxy: TcpProxy): string {
    const url = new URL(String(suite.env['DATABASE_URL']));
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    return url.toString();
  }

  async function proxyToDatabase(): Promise<TcpProxy> {
    const url = new URL(String(suite.env['DATABASE_URL']));
    return startTcpProxy({ host: url.hostname, port: Number(url.port || 5432) });
  }


  async function expectExact(jobId: string, userId: string, total: number, granted: number): Promise<void> {
    const s = await status(jobId);
    expect(s).toMatchObject({ status: 'completed', totalImages: total, deliveredImages: total, credits: { reserved: total, captured: total, released: 0 } });
    const view = await readDb(suite.database, jobId, userId);
    expect(new Set(view.attachments.map((a) => `${a.stage}/${a.slot}`)).size).toBe(total);
    expect(view.attachments).toHaveLength(total);
    expect(view.ledger.filter((l) => l.kind === 'capture')).toHaveLength(total);
    expect(view.balance).toEqual({ balance: granted - total, reserved: 0 });
  }


  it('a loss shorter than the lease TTL: the worker keeps its in-flight attempts, delivers them once the database is back, and finishes the job itself, exact', { timeout: 150_000 }, async () => {
    const USER = 'partition-short';
    const JOB = 'partition-short-job';
    const proxy = await proxyToDatabase();
    // Calls after the 4th wait until the proxy is cut, then are answered at once: their images
    // reach the worker while it has no database, and their deliveries must wait for it.
    let cut!: () => void;
    const isCut = new Promise<void>((r) => (cut = r));
    const server = await startFakeGeminiServer({ latencyMs: 50, hold: ({ n }) => (n > 4 ? isCut : undefined) });
    const workers: CliProcess[] = [];
    try {
      await suite.grant(USER, 30);
      await submit(JOB, USER, [['short a', 8], ['short b', 8]], server);
      // The provider limit is not what this test is about: a ceiling of 4 starts the fleet's limit there (no slow start from 2).
      const partitioned = await worker('partition-short', server, { DATABASE_URL: viaProxy(proxy), IMAGEGEN_LOG_LEVEL: 'debug', IMAGEGEN_PROVIDER_MAX_INFLIGHT: '4' });
      workers.push(partitioned);
      await waitFor('four calls in flight past the first four', () => server.calls() >= 8 && server.inFlight() >= 4, 60_000);
      proxy.cut();
      cut();
      // The loss lasts until the held calls are answered, and at least 3 s (the test's own bound, under the 15 s TTL).
      const cutAt = Date.now();
      for (let n = 5; n <= 8; n++) await server.settled(n);
      await waitFor('3 s of loss', () => Date.now() - cutAt >= 3_000, 10_000, 100);
      proxy.restore();
      await waitFor('the job to complete', async () => (await status(JOB)).status === 'completed', 90_000, 200);
      expect(partitioned.child.exitCode).toBeNull();
      await expectExact(JOB, USER, 16, 30);
      // The answers that came during the loss were delivered, not thrown away and paid for again.
      expect(server.requests.slice(4, 8).map((r) => r.outcome)).toEqual(['answered', 'answered', 'answered', 'answered']);
      expect(server.calls(), `one call per image: no attempt was lost to the outage; the worker said:\n${warnings(partitioned.stderr())}`).toBe(16);
      expect(logLines(partitioned.stderr(), 'lost the job lease to another runner: stopping')).toHaveLength(0);
    } finally {
      await stopWorkers(workers);
      await server.close();
      await proxy.close();
    }
  });

  it('a loss longer than the TTL: another worker takes the job over; the partitioned worker delivers none of its late answers, stays up, and the job ends exact', { timeout: 150_000 }, async () => {
    const USER = 'partition-long';
    const JOB = 'partition-long-job';
    const proxy = await proxyToDatabase();
    // Calls that arrived before the cut (the partitioned worker's: the other one starts only
    // then) are held until the job has been taken over and the proxy restored.
    let cutAtCall = Number.POSITIVE_INFINITY;
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const server = await startFakeGeminiServer({ latencyMs: 150, hold: ({ n }) => (n <= cutAtCall ? released : undefined) });
    const env = { IMAGEGEN_LEASE_TTL_SECONDS: '3' };
    const workers: CliProcess[] = [];
    try {
      await suite.grant(USER, 30);
      await submit(JOB, USER, [['long a', 8], ['long b', 8]], server);
      const partitioned = await worker('partition-long-a', server, { ...env, DATABASE_URL: viaProxy(proxy) });
      workers.push(partitioned);
      await waitFor('the first worker to take the job', () => jobsTaken(partitioned.stderr()).has(JOB), 60_000);
      await waitFor('calls of the first worker in flight', () => server.inFlight() >= 2, 60_000);
      cutAtCall = server.calls();
      proxy.cut();
      const survivor = await worker('partition-long-b', server, env);
      workers.push(survivor);
      await waitFor('the second worker to take the job over', () => jobsTaken(survivor.stderr()).has(JOB), 60_000);
      // The database comes back for the first worker, and only then are its old calls answered.
      proxy.restore();
      const accepted = proxy.accepted;
      await waitFor('the first worker to reconnect', () => proxy.accepted > accepted, 60_000);
      release();
      await waitFor('the job to complete', async () => (await status(JOB)).status === 'completed', 90_000, 200);
      await waitFor('the held calls to be answered', () => server.requests.filter((r) => r.n <= cutAtCall).every((r) => r.outcome !== 'pending'), 30_000);
      await expectExact(JOB, USER, 16, 30);
      // None of the answers the first worker got after losing the job became a delivery.
      const view = await readDb(suite.database, JOB, USER);
      const heldStamps = new Set(server.requests.filter((r) => r.n <= cutAtCall && r.servedStamp !== undefined).map((r) => r.servedStamp));
      expect(heldStamps.size, 'the held calls were answered with images').toBeGreaterThan(0);
      const storage = join(suite.ws.dataDir, 'storage');
      const delivered = await Promise.all(view.attachments.map(async (a) => readStamp(new Uint8Array(await readFile(join(storage, a.storageKey))))));
      expect(delivered.filter((stamp) => heldStamps.has(stamp))).toEqual([]);
      expect(logLines(partitioned.stderr(), 'lost the job lease to another runner: stopping').length).toBeGreaterThan(0);
      // It stayed up, and heartbeats again.
      expect(partitioned.child.exitCode).toBeNull();
      await waitFor('the first worker to be listed again', async () => {
        const listed = parseSingleJson<{ workers: { name: string }[] }>((await suite.run(['workers', '--json'])).stdout);
        return listed.workers.some((w) => w.name === 'partition-long-a');
      }, 30_000, 300);
    } finally {
      release();
      await stopWorkers(workers);
      await server.close();
      await proxy.close();
    }
  });
});
