// What the database threads share (`pglite-thread.mjs`, the embedded database; `pg-thread.mjs`,
// PostgreSQL's client): the int8 rule and errors as plain data. Plain JavaScript for the same
// reason as they are (a worker_threads Worker loads them as they are, from `src/db` under the
// tests and from `dist/db` once built; scripts/copy-page-assets.mjs copies all three).

export const INT8_OID = 20;

/** Same rule as `parseInt8` in database.ts (a function cannot cross to a thread). */
export function parseInt8(text) {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`int8 value ${text} is beyond Number.MAX_SAFE_INTEGER (2^53-1)`);
  return value;
}

/**
 * An error as plain data, for `postMessage`: its own fields (`code`, `detail`, `constraint`, ...
 * of a SQL error) kept, with an AggregateError's `errors` and a `cause` (pg's connection errors
 * carry both), four levels deep at most.
 */
export function plainError(error, depth = 0) {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const fields = {};
  for (const [key, value] of Object.entries(error)) {
    if (value === undefined || typeof value === 'function' || (typeof value === 'object' && value !== null)) continue;
    fields[key] = value;
  }
  const plain = { ...fields, name: error.name, message: error.message, stack: error.stack };
  if (depth < 4 && error instanceof AggregateError) plain.errors = error.errors.map((e) => plainError(e, depth + 1));
  if (depth < 4 && error.cause !== undefined) plain.cause = plainError(error.cause, depth + 1);
  return plain;
}
