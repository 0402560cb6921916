import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * A user's jobs newest first (`GET /v1/jobs`, the live page's list) read in index order:
 * `where user_id = $1 [and (created_at, id) < cursor] order by created_at desc, id desc
 * limit n` is an index range scan of n rows, however many jobs the user has; on
 * `jobs_by_user (user_id)` alone it read and sorted all of them for every page. The
 * composite index leads with `user_id`, so it serves every query the old one did.
 */
export const jobsByUserCreated: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`create index jobs_by_user_created on jobs (user_id, created_at desc, id desc)`.execute(db);
    await sql`drop index jobs_by_user`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`create index jobs_by_user on jobs (user_id)`.execute(db);
    await sql`drop index jobs_by_user_created`.execute(db);
  },
};
