import { sql, type RawBuilder } from 'kysely';

/**
 * A JSON value as a `jsonb` SQL expression.
 *
 * Bound as text and cast in SQL: `pg` turns a JS array parameter into a Postgres
 * array literal and PGlite JSON-encodes anything bound to a jsonb parameter (a
 * string would become a JSON string), so only text is bound the same way by both.
 */
export function jsonb<T>(value: T): RawBuilder<T> {
  return sql<T>`cast(cast(${JSON.stringify(value)} as text) as jsonb)`;
}
