/**
 * PostgreSQL's client in a thread of its own (`PgRemotePool`, `pg-thread.mjs`), against a real
 * server: a session keeps its connection until released (a transaction's statements share it),
 * a release rides on the next message and frees its connection for the next session, errors
 * cross with the fields the classifiers read (SQLSTATE, constraint; an unreachable server's
 * code), int8 and dates come back as the main-thread pool returns them, and a thread that
 * ends fails what it had outstanding. The whole PostgreSQL leg of the suite runs through it
 * too (`openDatabase`'s default).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PgRemotePool } from '../../src/db/pg-remote.js';
import { isConnectionError, isTransientDatabaseError, isUniqueViolation } from '../../src/db/internal/sql-errors.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { cliEntry } from '../support/cli-entry.js';

const skipped = !TEST_DATABASE_URL;
if (skipped) console.warn('pg-remote: skipped: DATABASE_URL not set (it needs a PostgreSQL server)');
// Skipped only without DATABASE_URL (no server to talk to); warned above.
const run = skipped ? describe.skip : describe;

const pool = (max = 2) => new PgRemotePool({ connectionString: TEST_DATABASE_URL!, max, idleInTransactionMs: 10_000 });

run('PgRemotePool: pg in a thread of its own', () => {
  it("a session keeps its connection until released: a transaction's statements share it; a release frees it for the next session", async () => {
    const remote = pool(1);
    try {
      const a = await remote.connect();
      await a.query('begin');
      await a.query(`set local application_name = 'remote-a'`);
      const inside = await a.query(`select current_setting('application_name') as name, pg_backend_pid() as pid`);
      await a.query('commit');
      const after = await a.query(`select current_setting('application_name') as name, pg_backend_pid() as pid`);
      expect(inside.rows).toEqual([{ name: 'remote-a', pid: (after.rows[0] as { pid: number }).pid }]);
      a.release();
      // One connection in all: each of these sessions gets it only because the previous release went back.
      for (let i = 0; i < 3; i++) {
        const next = await remote.connect();
        const { rows } = await next.query('select pg_backend_pid() as pid');
        expect(rows).toEqual([{ pid: (after.rows[0] as { pid: number }).pid }]);
        next.release();
      }
      await expect(a.query('select 1')).rejects.toThrow(/released/);
    } finally {
      await remote.end();
    }
  });

  it('rows come back as the main-thread pool returns them: int8 as a number, a date as a Date, jsonb as its value; the command and count', async () => {
    const remote = pool();
    try {
      const client = await remote.connect();
      const { rows, rowCount, command } = await client.query(`select $1::int8 as big, now() as at, '{"a":[1,"x"]}'::jsonb as doc, null::text as none`, ['9007199254740991']);
      expect(rows).toEqual([{ big: 9007199254740991, at: expect.any(Date), doc: { a: [1, 'x'] }, none: null }]);
      expect([rowCount, command]).toEqual([1, 'SELECT']);
      await expect(client.query(`select 9007199254740992::int8 as big`)).rejects.toThrow(/beyond Number.MAX_SAFE_INTEGER/);
      client.release();
    } finally {
      await remote.end();
    }
  });

  it('a SQL error keeps its SQLSTATE and constraint (the session stays usable); a refused connection its code, classified as a connection error', async () => {
    const remote = pool();
    try {
      const client = await remote.connect();
      await client.query('create temporary table t (id int primary key)');
      await client.query('insert into t values (1)');
      const duplicate = await client.query('insert into t values (1)').catch((e: unknown) => e);
      expect(duplicate).toBeInstanceOf(Error);
      expect(duplicate).toMatchObject({ code: '23505', constraint: 't_pkey' });
      expect(isUniqueViolation(duplicate, 't_pkey')).toBe(true);
      // The same session (its temporary table) answers on.
      expect((await client.query('select count(*)::int as n from t')).rows).toEqual([{ n: 1 }]);
      client.release();
    } finally {
      await remote.end();
    }
    // A port nobody listens on.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as { port: number }).port;
    await new Promise((resolve) => closed.close(resolve));
    const unreachable = new PgRemotePool({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres`, max: 1, idleInTransactionMs: 10_000 });
    try {
      const refused = await (await unreachable.connect()).query('select 1').catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(Error);
      expect(isConnectionError(refused)).toBe(true);
      expect(isTransientDatabaseError(refused)).toBe(true);
    } finally {
      await unreachable.end();
    }
  });

  it('a thread that ends fails its outstanding queries and every later one; end is idempotent', async () => {
    const remote = pool();
    const client = await remote.connect();
    const slow = client.query('select pg_sleep(5)').catch((e: unknown) => e);
    await new Promise((resolve) => setTimeout(resolve, 200));
    await remote.end();
    await remote.end();
    expect(await slow).toBeInstanceOf(Error);
    await expect(remote.connect()).rejects.toThrow();
  });

  it('end() with a query in flight: the query fails first (its connection closed), then end() resolves, and the process lives until it has', async () => {
    // A process of its own: the fault was a process that exited (code 0) while end() still ran,
    // because the late answer of the query unref'd the thread that end() was terminating.
    const compiled = pathToFileURL(join(dirname(await cliEntry()), 'db', 'pg-remote.js')).href;
    const script = [
      `const { PgRemotePool } = await import(${JSON.stringify(compiled)});`,
      `const pool = new PgRemotePool({ connectionString: process.env.DATABASE_URL, max: 2, idleInTransactionMs: 10000 });`,
      `const client = await pool.connect();`,
      `await client.query('select 1');`,
      `const order = [];`,
      `const slow = client.query('select pg_sleep(5)').then(() => order.push('answered'), (e) => order.push('failed: ' + e.message));`,
      `await new Promise((r) => setTimeout(r, 100));`,
      `await pool.end().then(() => order.push('ended'));`,
      `await slow;`,
      `console.log(JSON.stringify(order));`,
      `process.exitCode = 3;`,
    ].join('\n');
    const dir = mkdtempSync(join(tmpdir(), 'pg-remote-end-'));
    const file = join(dir, 'end-in-flight.mjs');
    writeFileSync(file, script);
    for (let run = 0; run < 3; run++) {
      const child = spawnSync(process.execPath, [file], { env: { PATH: process.env['PATH'], DATABASE_URL: TEST_DATABASE_URL }, encoding: 'utf8', timeout: 30_000 });
      expect({ status: child.status, stdout: child.stdout.trim() }, child.stderr).toEqual({ status: 3, stdout: JSON.stringify(['failed: Connection terminated', 'ended']) });
    }
    rmSync(dir, { recursive: true, force: true });
  });
});
