/**
 * A host that opens and closes pipelines (a test suite, a service that opens one per tenant or
 * per request batch) keeps nothing of them on `process`: after the first opening (one-time
 * registrations), more openings and closings leave every process listener count as it was.
 * The data folder's lock once added an `exit` listener per opening (Node warned after 10).
 * PGlite in a data folder, and PostgreSQL when DATABASE_URL is set.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { getBalance } from '../../src/db/ops/get-balance.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { openPipeline } from '../../src/pipeline.js';
import { createScratchDatabase, DATABASE_KINDS, postgresLegSkipped, type ScratchDatabase, TEST_PGLITE_TEMPLATE_DIR } from '../support/databases.js';

const EVENTS = ['exit', 'beforeExit', 'SIGINT', 'SIGTERM', 'SIGHUP', 'uncaughtException', 'unhandledRejection', 'warning', 'message', 'disconnect'] as const;
const listeners = (): Record<string, number> => Object.fromEntries(EVENTS.map((event) => [event, process.listenerCount(event)]));

for (const kind of DATABASE_KINDS) {
  const title = `opening and closing pipelines leaves nothing on process [${kind}]`;
  if (postgresLegSkipped(kind, title)) continue;

  describe(title, () => {
    let dataDir: string;
    let scratch: ScratchDatabase | undefined;
    beforeAll(async () => {
      dataDir = await mkdtemp(join(tmpdir(), 'imagegen-reopen-'));
      if (kind === 'postgres') scratch = await createScratchDatabase('postgres');
    });
    afterAll(async () => {
      await scratch?.dispose();
      await rm(dataDir, { recursive: true, force: true });
    });

    const env = () => ({ IMAGEGEN_LOG_LEVEL: 'silent', IMAGEGEN_PGLITE_TEMPLATE_DIR: TEST_PGLITE_TEMPLATE_DIR, ...(scratch ? { DATABASE_URL: scratch.config.databaseUrl as string } : {}) });

    /** Opens a pipeline, grants a credit (a write through every layer), closes it; returns the balance it read. */
    async function cycle(): Promise<number> {
      const pipeline = await openPipeline(loadConfig(env(), { dataDir }));
      try {
        await grantCredits(pipeline.database, 'reopen-user', 1);
        return (await getBalance(pipeline.database, 'reopen-user')).balance;
      } finally {
        await pipeline.close();
      }
    }

    it('after the first, five more openings: every listener count as it was, the lock file gone, the data kept', { timeout: 120_000 }, async () => {
      expect(await cycle()).toBe(1);
      const settled = listeners();
      for (let i = 2; i <= 6; i++) {
        expect(await cycle()).toBe(i);
        expect(listeners(), `after opening ${i}`).toEqual(settled);
      }
      if (kind === 'pglite') expect(existsSync(join(dataDir, 'db.lock'))).toBe(false);
    });
  });
}
