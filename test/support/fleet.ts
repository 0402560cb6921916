/**
 * What the fleet's end-to-end suites do with a CLI suite on PostgreSQL: start a named
 * worker against a fake Gemini server, submit a job file, read a job's `--json` summary.
 *
 * @example
 *   const fleet = fleetOf(suite);
 *   const w = await fleet.worker('a', server, { IMAGEGEN_LEASE_TTL_SECONDS: '3' }, ['--concurrency', '4']);
 *   await fleet.submit('job-1', 'alice', [['a fox', 8]], server);
 *   expect((await fleet.status('job-1')).status).toBe('completed');
 */
import { expect } from 'vitest';
import type { CliProcess } from './cli.js';
import type { CliSuite } from './cli-suite.js';
import { jobSpec, parseSingleJson, type Summary } from './cli-workspace.js';
import type { FakeGeminiServer } from './fake-gemini-server.js';

export interface FleetHelpers {
  /** `imagegen worker ...args` named `name` (`IMAGEGEN_WORKER_NAME`: distinct names, so the lease TTL decides as across hosts). */
  worker(name: string, server: FakeGeminiServer, env?: Record<string, string>, args?: readonly string[]): Promise<CliProcess>;
  /** `imagegen submit` of a job file with stages `[prompt, quantity]` and `extra` fields; expects exit 0. */
  submit(jobId: string, userId: string, stages: readonly (readonly [string, number])[], server: FakeGeminiServer, extra?: Record<string, unknown>): Promise<void>;
  /** `imagegen status <jobId> --json`, parsed. */
  status(jobId: string): Promise<Summary & { runner?: unknown }>;
}

export function fleetOf(suite: CliSuite): FleetHelpers {
  return {
    worker: (name, server, env = {}, args = []) =>
      suite.start(['worker', ...args], { env: { ...suite.env, GEMINI_BASE_URL: server.url, IMAGEGEN_WORKER_NAME: name, ...env } }),
    async submit(jobId, userId, stages, server, extra = {}) {
      const file = await suite.ws.writeJob(`${jobId}.json`, { ...(jobSpec(jobId, userId, stages) as object), ...extra });
      const submitted = await suite.run(['submit', file], { env: { ...suite.env, GEMINI_BASE_URL: server.url } });
      expect(submitted.code, submitted.stderr).toBe(0);
    },
    status: async (jobId) => parseSingleJson((await suite.run(['status', jobId, '--json'])).stdout),
  };
}
