import { sql } from 'kysely';
import type { Database } from '../database.js';

/**
 * One round trip that touches no table: resolves when the database answers (a readiness
 * probe), rejects with the driver's error when it does not. No lock, no transaction.
 */
export async function pingDatabase(database: Database): Promise<void> {
  await sql`select 1`.execute(database.db);
}
