/**
 * `imagegen worker --metrics-port` on PostgreSQL: the built CLI as a child process serves
 * `GET /metrics`; a job submitted through the queue runs there against a fake Gemini server
 * that fails a seeded share of calls (429, 503, an answer without an image), and after the job ends the scraped
 * values equal what `imagegen status --json` and `imagegen stats --json` say.
 *
 * The worker is started with `--metrics-port 0`: the system picks a free port and the
 * worker logs the URL (`metrics served`), so no port is guessed.
 * Skipped, visibly, when `DATABASE_URL` is not set.
 */
import { createServer, type Server } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomMixBehavior } from '../support/fake-gemini-server.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { logLines, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { jobSpec, parseSingleJson, type Summary } from '../support/cli-workspace.js';
import { failedByClass, parseExposition, sampleOf, seriesOf } from '../support/prometheus-text.js';

if (!TEST_DATABASE_URL) console.warn('e2e worker metrics skipped: DATABASE_URL not set');

const USER = 'metrics-e2e';
const JOB = 'metrics-e2e-job';

describe.skipIf(!TEST_DATABASE_URL)('imagegen worker --metrics-port [postgres]', () => {
  let suite: CliSuite;

  beforeAll(async () => {
    suite = await openCliSuite({
      postgres: true,
      server: {
        latencyMs: 10,
        behavior: randomMixBehavior({ seed: 11, failureRate: 0.35, classes: ['status:503', 'text_only', { status: 429, retryDelay: '0.01s' }] }),
      },
      env: { IMAGEGEN_PROVIDER_MAX_INFLIGHT: '6', IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '20', IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '100', IMAGEGEN_PRICE_PER_IMAGE: '2' },
      grants: { [USER]: 100 },
    });
  });
  afterAll(() => suite?.close());

  async function stop(worker: CliProcess): Promise<void> {
    worker.child.kill('SIGTERM');
    const ended = await worker.exited;
    expect(ended.code, ended.stderr.slice(-2000)).toBe(0);
  }

  it('after a job ran on the worker, GET /metrics equals the job\'s status --json and stats --json', { timeout: 120_000 }, async () => {
    const worker = await suite.start(['worker', '--metrics-port', '0', '--metrics-host', '127.0.0.1']);
    try {
      await waitFor('the worker to serve its metrics', () => logLines(worker.stderr(), 'metrics served').length > 0, 60_000);
      const url = String(logLines(worker.stderr(), 'metrics served')[0]?.['url']);
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      // Served before any job: the queue is empty, nothing is in flight.
      const idle = parseExposition(await (await fetch(url)).text());
      expect(sampleOf(idle, 'imagegen_attempts_in_flight')).toBe(0);
      expect(sampleOf(idle, 'imagegen_images_delivered_total')).toBe(0);

      const file = await suite.ws.writeJob('metrics.json', jobSpec(JOB, USER, [['metrics a', 5], ['metrics b', 4]]));
      const submitted = await suite.run(['submit', file]);
      expect(submitted.code, submitted.stderr).toBe(0);
      let summary: Summary | undefined;
      await waitFor(
        'the job to end',
        async () => {
          summary = parseSingleJson<Summary>((await suite.run(['status', JOB, '--json'])).stdout);
          return !['queued', 'running'].includes(summary.status);
        },
        90_000,
        200,
      );
      const ended = summary as Summary & { attempts: Summary['attempts'] & { abandoned: number } };
      expect(ended.status).toBe('completed');
      // The run had failures to count, of more than one class.
      expect(Object.keys(ended.attempts.byClass).length).toBeGreaterThanOrEqual(2);
      const stats = parseSingleJson<{ retries: number; retriesDelivered: number }>((await suite.run(['stats', '--json'])).stdout);

      const response = await fetch(url);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
      const text = await response.text();
      const samples = parseExposition(text);
      expect(sampleOf(samples, 'imagegen_images_delivered_total')).toBe(ended.deliveredImages);
      expect(sampleOf(samples, 'imagegen_attempts_total', { class: 'none', outcome: 'delivered' })).toBe(ended.deliveredImages);
      expect(failedByClass(samples)).toEqual(ended.attempts.byClass);
      expect(seriesOf(samples, 'imagegen_attempts_total').reduce((sum, s) => sum + s.value, 0)).toBe(ended.attempts.total);
      expect(sampleOf(samples, 'imagegen_retries_total')).toBe(stats.retries);
      expect(sampleOf(samples, 'imagegen_retry_successes_total')).toBe(stats.retriesDelivered);
      expect(sampleOf(samples, 'imagegen_credits_captured_total')).toBe(ended.credits.captured);
      expect(sampleOf(samples, 'imagegen_credits_released_total')).toBe(ended.credits.released);
      expect(ended.credits.captured).toBe(2 * ended.deliveredImages);
      expect(sampleOf(samples, 'imagegen_provider_latency_seconds_count')).toBe(ended.attempts.total);
      expect(sampleOf(samples, 'imagegen_delivery_latency_seconds_count')).toBe(ended.deliveredImages);
      expect(sampleOf(samples, 'imagegen_attempts_in_flight')).toBe(0);
      expect(sampleOf(samples, 'imagegen_jobs', { status: 'completed' })).toBe(1);
      expect(sampleOf(samples, 'imagegen_queue_depth')).toBe(0);
      // Cost: what status --json prices from the attempts' usage, split as delivered and failed answers.
      expect(ended.cost.estimatedUsd).toBeGreaterThan(0);
      const costOf = (outcome: string) => seriesOf(samples, 'imagegen_cost_usd_total').filter((s) => s.labels['outcome'] === outcome).reduce((sum, s) => sum + s.value, 0);
      expect(costOf('delivered') + costOf('failed')).toBeCloseTo(ended.cost.estimatedUsd, 9);
      expect(costOf('failed')).toBeCloseTo(ended.cost.wastedUsd, 9);
      expect(costOf('possibly_billed')).toBeCloseTo(ended.cost.possiblyBilledUsd, 9);
      // The fleet's adaptive limit, within its ceiling; the worker's share of it is 0 once it has no work.
      const limit = sampleOf(samples, 'imagegen_provider_limit');
      expect(limit).toBeGreaterThanOrEqual(1);
      expect(limit).toBeLessThanOrEqual(6);
      expect(sampleOf(samples, 'imagegen_provider_limit_share')).toBeLessThanOrEqual(limit);
      // Read live on each scrape: with no work left the worker gives its share back at its next rebalance.
      await waitFor('the worker\'s share to read 0 once it has no work', async () => sampleOf(parseExposition(await (await fetch(url)).text()), 'imagegen_provider_limit_share') === 0, 30_000, 100);
      expect(sampleOf(samples, 'imagegen_process_resident_memory_bytes')).toBeGreaterThan(0);
      expect(text).not.toContain(JOB);
      expect(text).not.toContain(USER);
    } finally {
      await stop(worker);
    }
  });

  it('a port out of range is refused before anything runs, naming the flag (exit 2)', async () => {
    const refused = await suite.run(['worker', '--metrics-port', '70000']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('imagegen: --metrics-port: must be a port number in 0..65535');
    expect(logLines(refused.stderr, 'worker started')).toEqual([]);
  });

  it('a port already in use is refused at start (exit 1, unavailable), naming the flag; no job is taken', async () => {
    const taken: Server = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    try {
      const port = (taken.address() as { port: number }).port;
      const refused = await suite.run(['worker', '--metrics-port', String(port)]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`--metrics-port ${port}`);
      expect(refused.stderr).toContain('EADDRINUSE');
      expect(logLines(refused.stderr, 'worker started')).toEqual([]);
    } finally {
      await new Promise<void>((resolve) => taken.close(() => resolve()));
    }
  });
});
