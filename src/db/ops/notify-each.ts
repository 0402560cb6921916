import { sql } from 'kysely';
import type { Database } from '../database.js';

/**
 * `pg_notify(channel, payload)` for each payload, in order, in one statement (one round
 * trip, one transaction: listeners get them together, in this order, when it commits).
 * The payloads travel as one JSON array bound as text, which both drivers bind alike.
 * PostgreSQL folds identical notifications of one transaction into one: callers send
 * payloads that differ (each names its own event).
 *
 * @example
 * await notifyEach(database, PROGRESS_CHANNEL, [first, second]);
 */
export async function notifyEach(database: Database, channel: string, payloads: readonly string[]): Promise<void> {
  if (payloads.length === 0) return;
  if (payloads.length === 1) return database.notify(channel, payloads[0]!);
  await sql`select count(pg_notify(${channel}, payload)) from jsonb_array_elements_text(cast(cast(${JSON.stringify(payloads)} as text) as jsonb)) as payload`.execute(database.db);
}
