// The embedded database's own thread: PGlite (postgres compiled to WASM) runs here, so its
// SQL, its WASM and the parsing of its answers do not take the main thread's time (issue 16:
// on the main thread they were about a third of its busy time per delivered image).
//
// Plain JavaScript, not TypeScript: a worker_threads Worker loads this file as it is, from
// `src/db` under the tests and from `dist/db` once built (copied by scripts/copy-assets.mjs).
// The main side is `pglite-remote.ts`; the protocol, one message per request:
//   { id, op: 'open', dataDir?, loadDataDir?: ArrayBuffer, extraStartParams: string[] } -> null
//   { id, op: 'query', sql, params }                  -> { rows, affectedRows }
//   { id, op: 'listen', channel, listener }           -> null; then { op: 'notification', listener, payload }
//   { id, op: 'unlisten', listener }                  -> null
//   { id, op: 'dump' }                                -> ArrayBuffer (a gzipped tar of the data folder)
//   { id, op: 'close' }                               -> null
// answered { id, value } or { id, error: { name, message, stack, code?, ... } }.
import { parentPort } from 'node:worker_threads';
import { PGlite } from '@electric-sql/pglite';

const INT8_OID = 20;

// Same rule as `parseInt8` in database.ts (a function cannot cross to this thread).
function parseInt8(text) {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`int8 value ${text} is beyond Number.MAX_SAFE_INTEGER (2^53-1)`);
  return value;
}

/** An error as plain data: its own fields (`code`, `detail`, `constraint`, ... of a SQL error) kept. */
function plainError(error) {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const fields = {};
  for (const [key, value] of Object.entries(error)) {
    if (value === undefined || typeof value === 'function' || (typeof value === 'object' && value !== null)) continue;
    fields[key] = value;
  }
  return { ...fields, name: error.name, message: error.message, stack: error.stack };
}

let pglite;
const unlisteners = new Map();

async function handle(message) {
  switch (message.op) {
    case 'open': {
      pglite = await PGlite.create({
        parsers: { [INT8_OID]: parseInt8 },
        startParams: [...PGlite.defaultStartParams, ...(message.extraStartParams ?? [])],
        ...(message.dataDir !== undefined ? { dataDir: message.dataDir } : {}),
        ...(message.loadDataDir !== undefined ? { loadDataDir: new Blob([message.loadDataDir]) } : {}),
      });
      return { value: null };
    }
    case 'query': {
      const result = await pglite.query(message.sql, message.params);
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
