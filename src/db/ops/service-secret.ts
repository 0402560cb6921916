import { randomBytes } from 'node:crypto';
import type { Database } from '../database.js';

/**
 * The service's secret named `name`, created (32 random bytes, base64url) on first use.
 * Every process on the database gets the same one: two that create it at once both
 * insert `on conflict do nothing`, then both read the one that won. No lock held.
 */
export async function serviceSecret(database: Database, name: string): Promise<string> {
  await database.db
    .insertInto('service_secrets')
    .values({ name, secret: randomBytes(32).toString('base64url') })
    .onConflict((oc) => oc.column('name').doNothing())
    .execute();
  const row = await database.db.selectFrom('service_secrets').select('secret').where('name', '=', name).executeTakeFirstOrThrow();
  return row.secret;
}
