import { randomBytes } from 'node:crypto';
import type { Database } from '../database.js';

/** A new signing secret in the Standard Webhooks form: `whsec_` + base64 of 32 random bytes. */
function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString('base64')}`;
}

/**
 * User `userId`'s webhook signing secret, made on first use. Every later call (any
 * process) returns the same secret.
 *
 * Locking: none taken on purpose. Two first uses racing insert with `on conflict do
 * nothing` (the primary key decides which secret wins), then both read the winner.
 */
export async function getWebhookSecret(database: Database, userId: string): Promise<string> {
  const found = await database.db.selectFrom('webhook_secrets').select('secret').where('user_id', '=', userId).executeTakeFirst();
  if (found) return found.secret;
  await database.db
    .insertInto('webhook_secrets')
    .values({ user_id: userId, secret: newWebhookSecret() })
    .onConflict((oc) => oc.column('user_id').doNothing())
    .execute();
  const row = await database.db.selectFrom('webhook_secrets').select('secret').where('user_id', '=', userId).executeTakeFirstOrThrow();
  return row.secret;
}
