/**
 * PGlite in its own thread (`PgliteRemote`): rows, SQL errors with their SQLSTATE, LISTEN,
 * a dump that starts another database, and the thread's end. Real PGlite, in memory.
 * `openDatabase` runs it so by default (`pgliteThread`), or in the calling thread.
 */
import { sql } from 'kysely';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deliverSlot, JOB_EVENTS_CHANNEL, openDatabase, type Database } from '../../src/db/index.js';
import { encodeJobEventsAppended } from '../../src/db/notifications.js';
import { PgliteRemote } from '../../src/db/pglite-remote.js';
import { withJobsPipeline, withPipeline, type Invocation } from '../../src/cli/invocation.js';
import { loadConfig } from '../../src/config.js';
import { TEST_PGLITE_TEMPLATE_DIR } from '../support/databases.js';
import { deliveryOf, seedJob, until } from './fixtures.js';

describe('PgliteRemote: PGlite in a thread of its own', () => {
  let remote: PgliteRemote;
  beforeAll(async () => {
    remote = await PgliteRemote.open({});
  }, 60_000);
  afterAll(() => remote?.close());

  it('starts postgres with the extra parameters given', async () => {
    const tuned = await PgliteRemote.open({ extraStartParams: ['-c', 'shared_buffers=16MB'] });
    try {
      expect((await tuned.query('show shared_buffers')).rows).toEqual([{ shared_buffers: '16MB' }]);
    } finally {
      await tuned.close();
    }
  }, 60_000);

  it('answers queries with typed rows (numbers, int8 as a number, text, timestamps, bytes, JSON) and affected rows', async () => {
    await remote.query('create table t (id int primary key, big int8, name text, at timestamptz, data bytea, doc jsonb)');
    const inserted = await remote.query('insert into t values ($1, $2, $3, $4, $5, $6), (2, 3, null, null, null, null)', [1, 9007199254740991, 'a', new Date('2026-12-06T10:00:00Z'), new Uint8Array([1, 2, 3]), JSON.stringify({ k: [1] })]);
    expect(inserted.affectedRows).toBe(2);
    const { rows } = await remote.query('select * from t order by id');
    expect(rows).toEqual([
      { id: 1, big: 9007199254740991, name: 'a', at: new Date('2026-12-06T10:00:00Z'), data: new Uint8Array([1, 2, 3]), doc: { k: [1] } },
      { id: 2, big: 3, name: null, at: null, data: null, doc: null },
    ]);
  });

  it('passes SQL errors on with their SQLSTATE and constraint, and an int8 beyond 2^53-1 fails the query', async () => {
    const duplicate = await remote.query('insert into t (id) values (1)').catch((e: unknown) => e);
    expect(duplicate).toBeInstanceOf(Error);
    expect(duplicate).toMatchObject({ code: '23505', constraint: 't_pkey' });
    await remote.query('insert into t (id, big) values (3, 9007199254740993)');
    await expect(remote.query('select big from t where id = 3')).rejects.toThrow(/beyond Number.MAX_SAFE_INTEGER/);
  });

  it('delivers notifications to a listener until it stops listening', async () => {
    const heard: string[] = [];
    const unlisten = await remote.listen('chan', (payload) => heard.push(payload));
    await remote.query("select pg_notify('chan', 'one')");
    await unlisten();
    await remote.query("select pg_notify('chan', 'two')");
    // A query after the last notify: anything it sent has been handed over by now.
    await remote.query('select 1');
    expect(heard).toEqual(['one']);
  });

  it('dumps the database; the dump starts another one with the same rows', async () => {
    const dump = await remote.dumpDataDir('gzip');
    const copy = await PgliteRemote.open({ loadDataDir: new Uint8Array(await dump.arrayBuffer()) });
    try {
      expect((await copy.query('select count(*)::int as n from t')).rows).toEqual([{ n: 3 }]);
    } finally {
      await copy.close();
    }
  }, 60_000);

  it('after close every request fails, and close again is a no-op', async () => {
    const other = await PgliteRemote.open({});
    await other.close();
    await expect(other.query('select 1')).rejects.toThrow(/thread ended/);
    await other.close();
  }, 60_000);
});

describe('openDatabase on PGlite: in a thread of its own by default, or in the calling one', () => {
  /** The main thread's event loop utilisation while the database works through a query of about a second. */
  async function busyShareDuringQuery(database: Database): Promise<number> {
    const before = performance.eventLoopUtilization();
    await sql`select count(*) from generate_series(1, 3000000)`.execute(database.db);
    return performance.eventLoopUtilization(before).utilization;
  }

  it.each([
    ['in its own thread (the default)', 'idle', {}],
    ['in the calling thread (pgliteThread: false)', 'busy', { pgliteThread: false }],
  ] as const)('%s: the same answers, notifications and deliveries; the main thread is %s while SQL runs', async (_title, mainThread, mode) => {
    const database = await openDatabase({ pgliteTemplateDir: TEST_PGLITE_TEMPLATE_DIR, ...mode });
    try {
      const { jobId } = await seedJob(database, { quantities: [2] });
      const heard: string[] = [];
      const stop = await database.listen(JOB_EVENTS_CHANNEL, (payload) => heard.push(payload));
      const first = await deliverSlot(database, deliveryOf(jobId, 0, 1));
      expect(await deliverSlot(database, deliveryOf(jobId, 0, 1, 2))).toEqual({ attachId: first.attachId, duplicate: true });
      await until(() => heard.length === 1);
      expect(heard).toEqual([encodeJobEventsAppended({ jobId, seq: 1 })]);
      await stop();
      const share = await busyShareDuringQuery(database);
      // Structural, not a timing: the WASM either runs on this thread's event loop (near 1) or not at all (near 0).
      if (mainThread === 'idle') expect(share).toBeLessThan(0.5);
      else expect(share).toBeGreaterThan(0.5);
    } finally {
      await database.close();
    }
  }, 120_000);
});

describe("the CLI's choice: a thread for the commands that run jobs, the calling thread for a few queries", () => {
  /** Where the command's embedded database ran, as its printed form says. */
  async function threadOf(env: Record<string, string>, runsJobs: boolean): Promise<unknown> {
    const dataDir = await mkdtemp(join(tmpdir(), 'imagegen-thread-'));
    try {
      const config = loadConfig({ IMAGEGEN_PGLITE_TEMPLATE_DIR: TEST_PGLITE_TEMPLATE_DIR, IMAGEGEN_LOG_LEVEL: 'silent', ...env }, { dataDir });
      const inv: Invocation = { args: [], values: {}, config, json: true };
      const open = runsJobs ? withJobsPipeline : withPipeline;
      return await open(inv, async (pipeline) => (JSON.parse(JSON.stringify(pipeline.database)) as { thread?: unknown }).thread);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }

  it('unset: run, serve, worker and submit get a thread; credits, status, stats and the rest do not; IMAGEGEN_PGLITE_THREAD decides for all', async () => {
    expect(await threadOf({}, true)).toBe(true);
    expect(await threadOf({}, false)).toBe(false);
    expect(await threadOf({ IMAGEGEN_PGLITE_THREAD: 'on' }, false)).toBe(true);
    expect(await threadOf({ IMAGEGEN_PGLITE_THREAD: 'off' }, true)).toBe(false);
  }, 120_000);
});
