import { sql, type Kysely } from 'kysely';
import type { Migration } from 'kysely/migration';

/**
 * What each attempt cost (issue 15, "money you can see"): the usage of every answer,
 * failed ones included (a safety block is billed), and its estimated cost.
 *
 * - `thoughts_tokens`: thinking tokens (`thoughtsTokenCount`), billed as output;
 * - `image_count`: images the answer held (0: a blocked or text-only answer);
 * - `model`: the model it was priced as;
 * - `cost_usd`: the answer's estimated cost from the price table (null: no answer, or no price);
 * - `possibly_billed_usd`: a timed-out call the provider may still bill, at one image's price.
 *
 * `float8`: estimates, summed for summaries, never money moved (credits stay integers).
 */
export const attemptCost: Migration = {
  async up(db: Kysely<unknown>) {
    await sql`alter table attempts
      add column thoughts_tokens integer,
      add column image_count integer,
      add column model text,
      add column cost_usd double precision check (cost_usd >= 0),
      add column possibly_billed_usd double precision check (possibly_billed_usd >= 0)`.execute(db);
  },
  async down(db: Kysely<unknown>) {
    await sql`alter table attempts
      drop column thoughts_tokens,
      drop column image_count,
      drop column model,
      drop column cost_usd,
      drop column possibly_billed_usd`.execute(db);
  },
};
