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

/**
 * In a transaction: inserts `id` into `table`, then `duplicate` (a key already there), which
 * fails (23505) and aborts it; the next statement is refused (25P02) until rollback, after which
 * `id` is not there.
 */
async function expectAbortedUntilRollback(remote: PgliteRemote, table: 't' | 'p', id: number, duplicate: number): Promise<void> {
  await remote.query('begin');
  await remote.query(`insert into ${table} (id) values ($1)`, [id]);
  await expect(remote.query(`insert into ${table} (id) values ($1)`, [duplicate])).rejects.toMatchObject({ code: '23505' });
  await expect(remote.query(`select id from ${table} where id = $1`, [id])).rejects.toMatchObject({ code: '25P02' });
  await remote.query('rollback');
  expect((await remote.query(`select id from ${table} where id = $1`, [id])).rows).toEqual([]);
}

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

  it('a begin goes to the thread with the next statement: one message fewer per transaction, the same transaction', async () => {
    const before = remote.sent;
    await remote.query('begin');
    expect(remote.sent).toBe(before);
    await remote.query('insert into t (id) values ($1)', [50]);
    await remote.query('rollback');
    expect(remote.sent).toBe(before + 2);
    expect((await remote.query('select id from t where id = $1', [50])).rows).toEqual([]);
    await remote.query('begin');
    await remote.query('insert into t (id) values ($1)', [51]);
    await remote.query('commit');
    expect((await remote.query('select id from t where id = $1', [51])).rows).toEqual([{ id: 51 }]);
    // A failure inside aborts the transaction as before: refused until rollback, nothing kept.
    await expectAbortedUntilRollback(remote, 't', 52, 51);
    // Nothing between begin and commit: still a transaction opened and closed.
    await remote.query('begin');
    await remote.query('commit');
    await expect(remote.query('commit')).resolves.toEqual({ rows: [], affectedRows: 0 });
  });

  it('after close every request fails, and close again is a no-op', async () => {
    const other = await PgliteRemote.open({});
    await other.close();
    await expect(other.query('select 1')).rejects.toThrow(/thread ended/);
    await other.close();
  }, 60_000);
});

describe('PgliteRemote: statements with parameters run prepared (parsed and planned once per text)', () => {
  let remote: PgliteRemote;
  /** The thread's prepared statements (a query without parameters: not prepared itself). */
  const preparedTexts = async () => (await remote.query('select statement from pg_prepared_statements order by prepare_time, name')).rows.map((row) => (row as { statement: string }).statement);

  beforeAll(async () => {
    remote = await PgliteRemote.open({});
    await remote.query('create table p (id int primary key, big int8, name text, at timestamptz, data bytea, doc jsonb, ok bool, price numeric, tags int[])');
  }, 60_000);
  afterAll(() => remote?.close());

  it('gives the rows and counts PGlite gives, every type through the same parsers, and prepares each text once', async () => {
    const insert = 'insert into p values ($1, $2, $3, $4, $5, $6, $7, $8, $9)';
    const one = await remote.query(insert, [1, 9007199254740991, 'a', new Date('2026-12-07T10:00:00Z'), new Uint8Array([1, 2, 255]), JSON.stringify({ k: [1, 'x'] }), true, '12.50', [3, 4]]);
    const two = await remote.query(insert, [2, null, null, null, null, null, false, null, null]);
    expect([one.affectedRows, two.affectedRows]).toEqual([1, 1]);
    const select = 'select * from p where id = any($1) order by id';
    const { rows } = await remote.query(select, [[1, 2]]);
    expect(rows).toEqual([
      { id: 1, big: 9007199254740991, name: 'a', at: new Date('2026-12-07T10:00:00Z'), data: new Uint8Array([1, 2, 255]), doc: { k: [1, 'x'] }, ok: true, price: '12.50', tags: [3, 4] },
      { id: 2, big: null, name: null, at: null, data: null, doc: null, ok: false, price: null, tags: null },
    ]);
    // The same rows as PGlite's own path (a statement without parameters is not prepared).
    expect((await remote.query('select * from p where id in (1, 2) order by id')).rows).toEqual(rows);
    expect((await remote.query('update p set name = $1 where id > $2', ['b', 0])).affectedRows).toBe(2);
    expect((await remote.query('delete from p where id = $1 returning id', [2])).rows).toEqual([{ id: 2 }]);
    await remote.query(select, [[1]]);
    const texts = await preparedTexts();
    for (const text of [insert, select, 'update p set name = $1 where id > $2', 'delete from p where id = $1 returning id']) expect(texts.filter((t) => t === text)).toHaveLength(1);
    expect(texts).not.toContain('select * from p where id in (1, 2) order by id');
  });

  it('passes errors on with their SQLSTATE, constraint and detail; the statement works again after one, a failed parse is not kept', async () => {
    const insert = 'insert into p (id, name) values ($1, $2)';
    await remote.query(insert, [10, 'x']);
    const duplicate = await remote.query(insert, [10, 'y']).catch((e: unknown) => e);
    expect(duplicate).toBeInstanceOf(Error);
    expect(duplicate).toMatchObject({ code: '23505', constraint: 'p_pkey', detail: 'Key (id)=(10) already exists.' });
    expect((await remote.query(insert, [11, 'z'])).affectedRows).toBe(1);
    const bad = 'select nope from p where id = $1';
    await expect(remote.query(bad, [1])).rejects.toMatchObject({ code: '42703' });
    expect(await preparedTexts()).not.toContain(bad);
    // The int8 parser's rule holds on this path too.
    await remote.query('update p set big = 9007199254740993 where id = $1', [11]);
    await expect(remote.query('select big from p where id = $1', [11])).rejects.toThrow(/beyond Number.MAX_SAFE_INTEGER/);
  });

  it('inside a transaction: an error aborts it as before (the next statement is refused until rollback), and rollback undoes prepared writes', async () => {
    await expectAbortedUntilRollback(remote, 'p', 20, 20);
  });

  it("a table changed under a prepared statement: outside a transaction the statement answers with the table's new columns", async () => {
    const select = 'select * from p where id = $1';
    expect(Object.keys((await remote.query(select, [1])).rows[0] as object)).not.toContain('extra');
    await remote.query("alter table p add column extra text default 'e'");
    expect((await remote.query(select, [1])).rows).toEqual([expect.objectContaining({ id: 1, extra: 'e' })]);
    // Prepared again: the next run is a prepared one with the new columns.
    expect((await remote.query(select, [1])).rows).toEqual([expect.objectContaining({ id: 1, extra: 'e' })]);
    await remote.query('alter table p drop column extra');
    // In a transaction the failed statement aborted it: the error is the caller's, as any other.
    await remote.query('begin');
    await expect(remote.query(select, [1])).rejects.toMatchObject({ code: '0A000' });
    await remote.query('rollback');
    expect(Object.keys((await remote.query(select, [1])).rows[0] as object)).not.toContain('extra');
  });

  it('keeps at most 200 statements prepared, closing the least recently used; every one answers', async () => {
    for (let n = 0; n < 230; n++) expect((await remote.query(`select $1::int + ${n} as v`, [1])).rows).toEqual([{ v: n + 1 }]);
    const texts = await preparedTexts();
    expect(texts.length).toBeLessThanOrEqual(200);
    expect(texts).toContain('select $1::int + 229 as v');
    expect(texts).not.toContain('select $1::int + 0 as v');
  });

  it('notifications sent by a prepared statement reach the listener, in order', async () => {
    const heard: string[] = [];
    const unlisten = await remote.listen('prepared', (payload) => heard.push(payload));
    await remote.query('select pg_notify($1, $2)', ['prepared', 'one']);
    await remote.query('select pg_notify($1, $2)', ['prepared', 'two']);
    await remote.query('select 1');
    await unlisten();
    expect(heard).toEqual(['one', 'two']);
  });
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

describe("the CLI's choice: a thread and 16 MB of shared buffers for the commands that run jobs, the calling thread and 4 MB for a few queries", () => {
  /** Where the command's embedded database ran, as its printed form says, and its shared buffers. */
  async function databaseOf(env: Record<string, string>, runsJobs: boolean): Promise<{ thread: unknown; sharedBuffers: unknown }> {
    const dataDir = await mkdtemp(join(tmpdir(), 'imagegen-thread-'));
    try {
      const config = loadConfig({ IMAGEGEN_PGLITE_TEMPLATE_DIR: TEST_PGLITE_TEMPLATE_DIR, IMAGEGEN_LOG_LEVEL: 'silent', ...env }, { dataDir });
      const inv: Invocation = { args: [], values: {}, config, json: true };
      const open = runsJobs ? withJobsPipeline : withPipeline;
      return await open(inv, async (pipeline) => ({
        thread: (JSON.parse(JSON.stringify(pipeline.database)) as { thread?: unknown }).thread,
        sharedBuffers: (await sql<{ shared_buffers: string }>`show shared_buffers`.execute(pipeline.database.db)).rows[0]?.shared_buffers,
      }));
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  }

  it('unset: run, serve, worker and submit get a thread; credits, status, stats and the rest do not; IMAGEGEN_PGLITE_THREAD decides for all', async () => {
    expect(await databaseOf({}, true)).toEqual({ thread: true, sharedBuffers: '16MB' });
    expect(await databaseOf({}, false)).toEqual({ thread: false, sharedBuffers: '4MB' });
    expect(await databaseOf({ IMAGEGEN_PGLITE_THREAD: 'on' }, false)).toEqual({ thread: true, sharedBuffers: '4MB' });
    expect(await databaseOf({ IMAGEGEN_PGLITE_THREAD: 'off' }, true)).toEqual({ thread: false, sharedBuffers: '16MB' });
  }, 120_000);
});
