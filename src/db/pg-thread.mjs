// PostgreSQL's client in a thread of its own: `pg`'s pool runs here, so a statement's socket
// write, the server's answer and the parsing of its rows take none of the main thread's time
// (issue 16, goal 2: on the 2-core test machine each socket write cost the main thread
// ~0.2 ms, about half of its time per delivered image on PostgreSQL; BENCHMARKS.md 11G).
//
// Plain JavaScript, not TypeScript: a worker_threads Worker loads this file as it is, from
// `src/db` under the tests and from `dist/db` once built (copied by scripts/copy-page-assets.mjs).
// The main side is `pg-remote.ts` (`PgRemotePool`, the pool kysely's PostgresDialect is given).
// workerData: { connectionString, max, idleInTransactionMs }. The protocol:
//   { id, op: 'query', client, sql, params, releases? }  -> { rows, rowCount, command }
//   { op: 'release', releases }                          (no answer)
//   { id, op: 'end', releases? }                         -> null (every session's connection closed, the pool ended,
//                                                           and every query still in flight answered before it)
// answered { id, value } or { id, error } (an error as plain data, its fields kept).
// `client` names a session: its first query checks a connection out of the pool for it, and
// it keeps that connection until its id comes back in a `releases` list (carried by the next
// message of any kind, and handled before that message's query: a released connection is in
// the pool again before the next one is asked for).
import { parentPort, workerData } from 'node:worker_threads';
import pg from 'pg';
import { INT8_OID, parseInt8, plainError } from './thread-shared.mjs';

/** An error that leaves its connection unusable (no SQLSTATE of a statement that failed on a live session). */
function breaksConnection(error) {
  const code = error?.code;
  return typeof code !== 'string' || !/^[0-9A-Z]{5}$/.test(code) || /^(08|57P)/.test(code);
}

const { connectionString, max, idleInTransactionMs } = workerData;
const types = { getTypeParser: (oid, format) => (oid === INT8_OID && format !== 'binary' ? parseInt8 : pg.types.getTypeParser(oid, format)) };
const pool = new pg.Pool({ connectionString, max, types, idle_in_transaction_session_timeout: idleInTransactionMs });
// As on the main side (database.ts): a broken connection must not be an unhandled 'error' event;
// the failing query rejects, and the engine treats that as a retryable `database` failure.
pool.on('connect', (client) => client.on('error', () => undefined));
pool.on('error', () => undefined);

/** Sessions by id: the connection (a promise while it is checked out) and whether its last query broke it. */
const sessions = new Map();

function release(ids, end = false) {
  for (const id of ids ?? []) {
    const session = sessions.get(id);
    if (session === undefined) continue;
    sessions.delete(id);
    // A broken connection, or every one at the end, is closed (a query still running on it fails).
    session.client.then(
      (client) => client.release(session.broken || end ? new Error('the connection is closed') : undefined),
      () => undefined,
    );
  }
}

/** Queries sent and not yet answered (their answers' promises). */
const inFlight = new Set();

/**
 * Every session's connection closed, then the pool ended. Answered after every query still in
 * flight (each fails: its connection is closed under it), so the main side, which ends the
 * thread on this answer, never has a query outstanding in a thread that is gone.
 */
async function end() {
  release([...sessions.keys()], true);
  await Promise.allSettled([...inFlight]);
  await pool.end();
  return null;
}

async function query(message) {
  let session = sessions.get(message.client);
  if (session === undefined) {
    session = { client: pool.connect(), broken: false };
    sessions.set(message.client, session);
  }
  const client = await session.client;
  try {
    const result = await client.query(message.sql, message.params);
    return { rows: result.rows, rowCount: result.rowCount, command: result.command };
  } catch (error) {
    if (breaksConnection(error)) session.broken = true;
    throw error;
  }
}

parentPort.on('message', (message) => {
  release(message.releases);
  if (message.op === 'release') return;
  const work = message.op === 'query' ? query(message) : message.op === 'end' ? end() : Promise.reject(new Error(`unknown op ${message.op}`));
  const answered = work.then(
    (value) => parentPort.postMessage({ id: message.id, value }),
    (error) => parentPort.postMessage({ id: message.id, error: plainError(error) }),
  );
  if (message.op !== 'query') return;
  inFlight.add(answered);
  void answered.finally(() => inFlight.delete(answered));
});
