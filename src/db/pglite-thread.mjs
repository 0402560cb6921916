// The embedded database's own thread: PGlite (postgres compiled to WASM) runs here, so its
// SQL, its WASM and the parsing of its answers do not take the main thread's time (issue 16:
// on the main thread they were about a third of its busy time per delivered image).
//
// Plain JavaScript, not TypeScript: a worker_threads Worker loads this file as it is, from
// `src/db` under the tests and from `dist/db` once built (copied by scripts/copy-page-assets.mjs).
// The main side is `pglite-remote.ts`; the protocol, one message per request:
//   { id, op: 'open', dataDir?, loadDataDir?: ArrayBuffer, extraStartParams: string[] } -> null
//   { id, op: 'query', sql, params }                  -> { rows, affectedRows }
//   any request may carry begin: true (a deferred `begin`, run before the request)
//   { id, op: 'listen', channel, listener }           -> null; then { op: 'notification', listener, payload }
//   { id, op: 'unlisten', listener }                  -> null
//   { id, op: 'dump' }                                -> ArrayBuffer (a gzipped tar of the data folder)
//   { id, op: 'close' }                               -> null
// answered { id, value } or { id, error: { name, message, stack, code?, ... } }.
import { parentPort } from 'node:worker_threads';
import { PGlite, protocol } from '@electric-sql/pglite';
import { INT8_OID, parseInt8, plainError } from './thread-shared.mjs';

const { serialize } = protocol;

/**
 * The statements this thread keeps prepared, by their SQL text: at most this many (the least
 * recently used is closed first). A job runs a few dozen distinct statements; kysely's
 * `in ($1, $2, ...)` lists of varying length are what the bound is for.
 */
const MAX_PREPARED = 200;

/** A statement worth preparing: data manipulation with parameters (not `begin`, DDL, `listen`, ...). */
const PREPARABLE = /^\s*(select|insert|update|delete|with)\b/i;

/** SQLSTATE 0A000 with this text: a prepared statement's result columns changed (DDL since it was prepared). */
const STALE_PLAN = /cached plan must not change result type/;

function concat(parts) {
  const out = new Uint8Array(parts.reduce((n, part) => n + part.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

/** Rows affected, from a CommandComplete's tag (`INSERT 0 3`, `UPDATE 2`, ...), as PGlite counts them. */
function affectedBy(tag) {
  const words = tag.split(' ');
  switch (words[0]) {
    case 'INSERT':
      return Number.parseInt(words[2], 10);
    case 'UPDATE':
    case 'DELETE':
    case 'COPY':
    case 'MERGE':
      return Number.parseInt(words[1], 10);
    default:
      return 0;
  }
}

/**
 * A statement's answer as `query` gives it (`rows` as objects by column name, each value
 * through the instance's parser for its type; `affectedRows`). PGlite's own `parseResults`
 * copies its whole table of parsers (hundreds of types) on every call: a third of this
 * thread's time per query in a profile.
 */
function resultsOf(rowDescription, messages, parsers) {
  const fields = rowDescription?.fields ?? [];
  const rows = [];
  let affectedRows = 0;
  for (const message of messages) {
    if (message.name === 'dataRow') {
      const row = {};
      for (let i = 0; i < fields.length; i++) {
        const text = message.fields[i];
        const field = fields[i];
        const parser = parsers[field.dataTypeID];
        row[field.name] = text === null ? null : parser ? parser(text, field.dataTypeID) : text;
      }
      rows.push(row);
    } else if (message.name === 'commandComplete') {
      affectedRows += affectedBy(message.text);
    }
  }
  return { rows, affectedRows };
}

/**
 * PGlite's `query` runs six protocol steps through the WASM one after another (parse,
 * describe, bind, describe, execute, sync), and postgres parses and plans the statement
 * again every time. A delivery's statements are the same few texts thousands of times, so
 * each is prepared once under a name (Parse + Describe, kept with its parameter types and
 * its row description) and then run as ONE protocol message (Bind + Execute + Sync): the
 * parse and analysis are postgres's cached ones, and the plan is its plan cache's (a generic
 * plan after five runs, when it costs no more than a custom one). Rows, errors (`code`,
 * `detail`, `constraint`, ...) and notifications come back as through `query`: the same
 * parsers and serializers of the same instance, PGlite's own protocol code.
 * BENCHMARKS.md 11D has the figures.
 */
class PreparedStatements {
  #pglite;
  #statements = new Map();
  #next = 0;

  constructor(pglite) {
    this.#pglite = pglite;
  }

  /** Whether `query(sql, params)` goes through a prepared statement. */
  static fits(sql, params) {
    return params.length > 0 && PREPARABLE.test(sql);
  }

  async query(sql, params) {
    const pglite = this.#pglite;
    try {
      return await pglite._runExclusiveQuery(async () => {
        const statement = this.#statements.get(sql) ?? (await this.#prepare(sql));
        // Most recently used last: the first one is the one to close when there are too many.
        this.#statements.delete(sql);
        this.#statements.set(sql, statement);
        const values = params.map((value, k) => (value === null || value === undefined ? null : (pglite.serializers[statement.paramTypes[k]] ?? String)(value)));
        const { messages } = await pglite.execProtocol(concat([serialize.bind({ statement: statement.name, values }), serialize.execute({}), serialize.sync()]), { syncToFs: false });
        return resultsOf(statement.rowDescription, messages, pglite.parsers);
      });
    } catch (error) {
      if (error?.code !== '0A000' || !STALE_PLAN.test(String(error.message))) throw error;
      // The table changed under the statement: prepare it again next time. Outside a
      // transaction the failed statement did nothing, so it can run now as PGlite runs it.
      await this.#close(sql);
      if (pglite.isInTransaction()) throw error;
      return pglite.query(sql, params);
    } finally {
      await pglite.syncToFs();
    }
  }

  async #prepare(sql) {
    const name = `imagegen_${this.#next++}`;
    const { messages } = await this.#pglite.execProtocol(concat([serialize.parse({ name, text: sql }), serialize.describe({ type: 'S', name }), serialize.sync()]), { syncToFs: false });
    const statement = {
      name,
      paramTypes: messages.find((m) => m.name === 'parameterDescription')?.dataTypeIDs ?? [],
      rowDescription: messages.find((m) => m.name === 'rowDescription'),
    };
    if (this.#statements.size >= MAX_PREPARED) {
      const [oldest] = this.#statements.keys();
      await this.#closeNow(oldest);
    }
    return statement;
  }

  async #close(sql) {
    await this.#pglite._runExclusiveQuery(() => this.#closeNow(sql));
  }

  async #closeNow(sql) {
    const statement = this.#statements.get(sql);
    if (!statement) return;
    this.#statements.delete(sql);
    await this.#pglite.execProtocol(concat([serialize.close({ type: 'S', name: statement.name }), serialize.sync()]), { syncToFs: false });
  }
}

let pglite;
let prepared;
const unlisteners = new Map();

/** Transaction control: no parameters, no rows; PGlite's simple protocol runs it in one step (its `query` takes six). */
const TRANSACTION_CONTROL = new Set(['begin', 'commit', 'rollback']);

async function handle(message) {
  // A `begin` the main side deferred to this request (PgliteRemote.query): it runs first.
  if (message.begin && pglite) await pglite.exec('begin');
  switch (message.op) {
    case 'open': {
      pglite = await PGlite.create({
        parsers: { [INT8_OID]: parseInt8 },
        startParams: [...PGlite.defaultStartParams, ...(message.extraStartParams ?? [])],
        ...(message.dataDir !== undefined ? { dataDir: message.dataDir } : {}),
        ...(message.loadDataDir !== undefined ? { loadDataDir: new Blob([message.loadDataDir]) } : {}),
      });
      prepared = new PreparedStatements(pglite);
      return { value: null };
    }
    case 'query': {
      if (TRANSACTION_CONTROL.has(message.sql) && message.params.length === 0) {
        await pglite.exec(message.sql);
        return { value: { rows: [], affectedRows: 0 } };
      }
      const result = PreparedStatements.fits(message.sql, message.params) ? await prepared.query(message.sql, message.params) : await pglite.query(message.sql, message.params);
      return { value: { rows: result.rows, affectedRows: result.affectedRows } };
    }
    case 'listen': {
      const unlisten = await pglite.listen(message.channel, (payload) => parentPort.postMessage({ op: 'notification', listener: message.listener, payload }));
      unlisteners.set(message.listener, unlisten);
      return { value: null };
    }
    case 'unlisten': {
      const unlisten = unlisteners.get(message.listener);
      unlisteners.delete(message.listener);
      await unlisten?.();
      return { value: null };
    }
    case 'dump': {
      const buffer = await (await pglite.dumpDataDir('gzip')).arrayBuffer();
      return { value: buffer, transfer: [buffer] };
    }
    case 'close': {
      unlisteners.clear();
      await pglite?.close();
      pglite = undefined;
      prepared = undefined;
      return { value: null };
    }
    default:
      throw new Error(`unknown request ${String(message.op)}`);
  }
}

parentPort.on('message', (message) => {
  handle(message).then(
    ({ value, transfer }) => parentPort.postMessage({ id: message.id, value }, transfer ?? []),
    (error) => parentPort.postMessage({ id: message.id, error: plainError(error) }),
  );
});
