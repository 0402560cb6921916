/**
 * Which database errors mean "the connection went away, try again" (`isTransientDatabaseError`):
 * the ones pg really throws when its socket breaks, produced here through a TCP proxy the
 * test cuts, and a table of the rest.
 */
import { describe, expect, it } from 'vitest';
import pg from 'pg';
import { isTransientDatabaseError } from '../../src/db/index.js';
import { TEST_DATABASE_URL } from '../support/databases.js';
import { startTcpProxy } from '../support/tcp-proxy.js';

describe('isTransientDatabaseError', () => {
  it.each([
    ['admin shutdown (57P01)', Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' }), true],
    ['connection refused', Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }), true],
    ['a broken client', new Error('Client has encountered a connection error and is not queryable'), true],
    ['a pool that could not connect in time', new Error('timeout exceeded when trying to connect'), true],
    ['a unique violation', Object.assign(new Error('duplicate key value violates unique constraint'), { code: '23505' }), false],
    ['a syntax error', Object.assign(new Error('syntax error at or near "selec"'), { code: '42601' }), false],
    ['not an error', 'Connection terminated', false],
  ])('%s: %s', (_title, error, transient) => {
    expect(isTransientDatabaseError(error)).toBe(transient);
  });

  it.skipIf(!TEST_DATABASE_URL)('every error pg throws after its socket broke is transient (PostgreSQL through a cut TCP proxy; skipped without DATABASE_URL)', async () => {
    const target = new URL(TEST_DATABASE_URL!);
    const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5432) });
    const url = new URL(TEST_DATABASE_URL!);
    url.hostname = '127.0.0.1';
    url.port = String(proxy.port);
    const client = new pg.Client({ connectionString: url.toString() });
    client.on('error', () => undefined);
    try {
      await client.connect();
      expect((await client.query('select 1 as one')).rows).toEqual([{ one: 1 }]);
      proxy.cut();
      const errors: unknown[] = [];
      for (let i = 0; i < 3; i++) errors.push(await client.query('select 1').then(() => 'answered', (error: unknown) => error));
      const messages = errors.map((e) => (e instanceof Error ? e.message : String(e)));
      expect(messages.some((m) => /not queryable/.test(m)), messages.join(' | ')).toBe(true);
      for (const error of errors) expect(isTransientDatabaseError(error), String(error)).toBe(true);
      // And a new client that cannot reach it.
      const refused = new pg.Client({ connectionString: url.toString(), connectionTimeoutMillis: 2_000 });
      refused.on('error', () => undefined);
      const failure = await refused.connect().then(() => 'connected', (error: unknown) => error);
      expect(isTransientDatabaseError(failure), String(failure)).toBe(true);
    } finally {
      await client.end().catch(() => undefined);
      await proxy.close();
    }
  });
});
