import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * Secrets the service keeps for itself, by name (today `page-links`: the HMAC key of
 * the live page's signed links and session cookies). Stored in the database so every
 * process on it signs and checks with the same key: `imagegen submit --open` prints a
 * link that `imagegen serve` accepts, with nothing to configure. Created on first use.
 */
export const serviceSecrets: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`create table service_secrets (
      name text primary key,
      secret text not null check (length(secret) >= 32),
      created_at timestamptz not null default now()
    )`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`drop table service_secrets`.execute(db);
  },
};
