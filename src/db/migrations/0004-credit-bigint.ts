import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * Credit amounts and balances become `bigint`: an `integer` column holds at most
 * 2^31-1, so a grant of 2147483648 (or a balance growing past it) failed with
 * `integer out of range`. The application keeps every amount at most
 * `Number.MAX_SAFE_INTEGER` (2^53-1, see `grantCredits`), and both drivers are told
 * to read `int8` as a JS number (`database.ts`), so the row types stay `number`.
 *
 * `price_per_image` too: `price_per_image x total` is the reservation, and a price
 * above 2^31-1 is a valid setting. Counts (images, attempts, bytes) stay `integer`.
 * The check constraints keep working unchanged on the wider type.
 */
export const creditBigint: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`alter table credit_accounts alter column balance type bigint, alter column reserved type bigint`.execute(db);
    await sql`alter table credit_ledger alter column amount type bigint`.execute(db);
    await sql`alter table jobs
      alter column price_per_image type bigint,
      alter column credits_reserved type bigint,
      alter column credits_captured type bigint,
      alter column credits_released type bigint`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    // Fails (and rolls back) when an amount no longer fits in an integer.
    await sql`alter table jobs
      alter column price_per_image type integer,
      alter column credits_reserved type integer,
      alter column credits_captured type integer,
      alter column credits_released type integer`.execute(db);
    await sql`alter table credit_ledger alter column amount type integer`.execute(db);
    await sql`alter table credit_accounts alter column balance type integer, alter column reserved type integer`.execute(db);
  },
};
