/**
 * The fleet's two optional gates, with real `imagegen worker` processes on PostgreSQL and the
 * provider's own record of every call (arrival and end, on the server's clock):
 *
 * - `IMAGEGEN_PROVIDER_MAX_PER_MINUTE`: the calls the whole fleet starts stay within the
 *   rate (any 5 s window holds at most rate x 5 s plus the buckets' one second of burst,
 *   twice);
 * - `IMAGEGEN_MAX_INFLIGHT_PER_USER`: one user's attempts in flight across the fleet stay
 *   within the cap while another user's job runs beside them.
 *
 * Skipped, visibly, when `DATABASE_URL` is not set.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGeminiServer, type FakeCallRecord, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { jobsTaken, stopWorkers, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { fleetOf, type FleetHelpers } from '../support/fleet.js';

if (!TEST_DATABASE_URL) console.warn('e2e fleet gate tests skipped: DATABASE_URL not set');

/** The most calls that arrived within any `windowMs` (a window starting at each arrival). */
export function maxStartsInWindow(records: readonly FakeCallRecord[], windowMs: number): number {
  const times = records.map((r) => r.arrivedAt).sort((a, b) => a - b);
  let best = 0;
  for (let i = 0, j = 0; i < times.length; i++) {
    while (j < times.length && times[j]! < times[i]! + windowMs) j++;
    best = Math.max(best, j - i);
  }
  return best;
}

/**
 * The most of `records` in flight at once, each counted from its arrival to the start of its
 * answer (server clock): a lower bound of what the client had in flight, so a cap the client
 * keeps is never seen broken here by the time an answer takes to travel.
 */
export function maxOverlap(records: readonly FakeCallRecord[]): number {
  const edges = records.flatMap((r) => [
    [r.arrivedAt, +1],
    [r.answeredAt ?? Number.POSITIVE_INFINITY, -1],
  ] as const);
  // Ends before starts at the same instant: a call that ended as another began does not overlap it.
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let now = 0;
  let best = 0;
  for (const [, step] of edges) best = Math.max(best, (now += step));
  return best;
}

describe('the window and overlap counters (so the gate tests can fail)', () => {
  const call = (arrivedAt: number, answeredAt: number) => ({ arrivedAt, answeredAt }) as FakeCallRecord;
  it('counts starts per window and calls in flight at once', () => {
    const records = [call(0, 50), call(10, 20), call(20, 30), call(1000, 1100), call(1005, 1010)];
    expect(maxStartsInWindow(records, 100)).toBe(3);
    expect(maxStartsInWindow(records, 2000)).toBe(5);
    expect(maxOverlap(records)).toBe(2);
    expect(maxOverlap([call(0, 10), call(0, 10), call(0, 10)])).toBe(3);
  });
});

describe.skipIf(!TEST_DATABASE_URL)('fleet gates on PostgreSQL (DATABASE_URL set; skipped otherwise)', () => {
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({ postgres: true });
  });
  afterAll(() => suite?.close());
  const worker = (name: string, server: FakeGeminiServer, env: Record<string, string>) => fleetOf(suite).worker(name, server, env, ['--concurrency', '8']);
  const submit: FleetHelpers['submit'] = (...a) => fleetOf(suite).submit(...a);
  const status: FleetHelpers['status'] = (jobId) => fleetOf(suite).status(jobId);


  async function runToEnd(jobs: readonly string[], workers: readonly CliProcess[]): Promise<void> {
    await waitFor('every job to complete', async () => {
      for (const w of workers) if (w.child.exitCode !== null) throw new Error(`a worker exited:\n${w.stderr().slice(-2000)}`);
      return (await Promise.all(jobs.map(status))).every((s) => s.status === 'completed');
    }, 150_000, 500);
  }


  it('IMAGEGEN_PROVIDER_MAX_PER_MINUTE=180 over two workers of --concurrency 8: no 5 s window holds more than 15 starts plus the burst', { timeout: 200_000 }, async () => {
    const USER = 'gate-rate';
    const JOBS = ['gate-rate-1', 'gate-rate-2'];
    // Without the gate these 30 calls of 100 ms would all start within about a second; with it they take about 10 s.
    const server = await startFakeGeminiServer({ latencyMs: 100 });
    const workers: CliProcess[] = [];
    try {
      await suite.grant(USER, 60);
      for (const jobId of JOBS) await submit(jobId, USER, [['rate a', 8], ['rate b', 7]], server);
      for (const name of ['rate-a', 'rate-b']) workers.push(await worker(name, server, { IMAGEGEN_PROVIDER_MAX_PER_MINUTE: '180', IMAGEGEN_WORKER_JOBS: '1' }));
      await runToEnd(JOBS, workers);
      expect(server.calls()).toBe(30);
      // Both workers ran a job: the rate was shared, not one worker's.
      expect(workers.filter((w) => jobsTaken(w.stderr()).size > 0)).toHaveLength(2);
      // 3 starts a second for the fleet; each worker's bucket holds one second of its part (<= 3 in all), a worker whose part
      // moves starts with a full bucket (+3), and on a loaded machine a request can reach the server late, bunched with the next (+2).
      const worst = maxStartsInWindow(server.requests, 5_000);
      expect(worst, `most starts in 5 s: ${worst}`).toBeLessThanOrEqual(15 + 3 + 3 + 2);
      for (const jobId of JOBS) expect(await status(jobId)).toMatchObject({ deliveredImages: 15, credits: { captured: 15, released: 0 } });
    } finally {
      await stopWorkers(workers);
      await server.close();
    }
  });

  it('IMAGEGEN_MAX_INFLIGHT_PER_USER=4 over two workers of --concurrency 8: one user never has more than 4 attempts in flight at the provider, while another user runs beside', { timeout: 200_000 }, async () => {
    const server = await startFakeGeminiServer({ latencyMs: 300 });
    const workers: CliProcess[] = [];
    const jobs = [
      { id: 'gate-user-a1', user: 'gate-user-a', prompt: 'capped one' },
      { id: 'gate-user-a2', user: 'gate-user-a', prompt: 'capped two' },
      { id: 'gate-user-b1', user: 'gate-user-b', prompt: 'other user' },
    ];
    try {
      await suite.grant('gate-user-a', 40);
      await suite.grant('gate-user-b', 20);
      for (const job of jobs) await submit(job.id, job.user, [[job.prompt, 12]], server);
      for (const name of ['user-a', 'user-b']) workers.push(await worker(name, server, { IMAGEGEN_MAX_INFLIGHT_PER_USER: '4', IMAGEGEN_WORKER_JOBS: '2' }));
      await runToEnd(jobs.map((j) => j.id), workers);
      const ofUserA = server.requests.filter((r) => r.prompt === 'capped one' || r.prompt === 'capped two');
      expect(ofUserA).toHaveLength(24);
      // Both of user A's jobs ran at once (on the two workers, or side by side): the cap, not the job count, held it to 4.
      const a1 = ofUserA.filter((r) => r.prompt === 'capped one');
      const a2 = ofUserA.filter((r) => r.prompt === 'capped two');
      expect(a1[0]!.arrivedAt).toBeLessThan(a2.at(-1)!.arrivedAt);
      expect(a2[0]!.arrivedAt).toBeLessThan(a1.at(-1)!.arrivedAt);
      const worstA = maxOverlap(ofUserA);
      expect(worstA, 'user A in flight at once').toBeLessThanOrEqual(4);
      expect(worstA, 'user A ran calls side by side').toBeGreaterThan(1);
      // The cap is per user: user B's calls ran while A's were in flight.
      const ofUserB = server.requests.filter((r) => r.prompt === 'other user');
      expect(ofUserB.some((b) => ofUserA.some((a) => a.arrivedAt < b.answeredAt! && b.arrivedAt < a.answeredAt!))).toBe(true);
      for (const job of jobs) expect(await status(job.id)).toMatchObject({ deliveredImages: 12, credits: { captured: 12, released: 0 } });
    } finally {
      await stopWorkers(workers);
      await server.close();
    }
  });
});
