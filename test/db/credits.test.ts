import { sql } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CreditOverflowError,
  deliverSlot,
  finishJob,
  getBalance,
  grantCredits,
  InsufficientCreditsError,
  loadJob,
  MIGRATIONS,
  openDatabase,
  replayLedger,
  submitJob,
} from '../../src/db/index.js';
import { createScratchDatabase, DATABASE_KINDS, forEachDatabase, TEST_DATABASE_URL, type ScratchDatabase } from '../support/databases.js';
import { raceCalls, raceTitle } from '../support/pg-race.js';
import { deliveryOf, footprint, inputAttachment, makeSpec, resultFromDatabase, seedJob, uid } from './fixtures.js';

forEachDatabase('credits', (ctx) => {
  it('grant adds spendable credits and the ledger replays to the balance', async () => {
    const user = uid('user');
    expect(await getBalance(ctx.database, user)).toEqual({ balance: 0, reserved: 0 });
    expect(await grantCredits(ctx.database, user, 70)).toEqual({ balance: 70 });
    expect(await grantCredits(ctx.database, user, 30)).toEqual({ balance: 100 });
    expect(await getBalance(ctx.database, user)).toEqual({ balance: 100, reserved: 0 });
    expect(await replayLedger(ctx.database, user)).toEqual({ balance: 100, reserved: 0 });
  });

  it('refuses a non-positive or fractional grant', async () => {
    await expect(grantCredits(ctx.database, uid('user'), 0)).rejects.toThrow(RangeError);
    await expect(grantCredits(ctx.database, uid('user'), 1.5)).rejects.toThrow(RangeError);
  });

  it('grants past int4 (2^31, then 2^31-1 more) are exact and read back as numbers on both drivers', async () => {
    const user = uid('user');
    expect(await grantCredits(ctx.database, user, 2 ** 31)).toEqual({ balance: 2 ** 31 });
    expect(await grantCredits(ctx.database, user, 2 ** 31 - 1)).toEqual({ balance: 2 ** 32 - 1 });
    expect(await getBalance(ctx.database, user)).toEqual({ balance: 2 ** 32 - 1, reserved: 0 });
    expect(await replayLedger(ctx.database, user)).toEqual({ balance: 2 ** 32 - 1, reserved: 0 });
    const ledger = await ctx.database.db.selectFrom('credit_ledger').select('amount').where('user_id', '=', user).orderBy('id').execute();
    expect(ledger).toEqual([{ amount: 2 ** 31 }, { amount: 2 ** 31 - 1 }]);
  });

  it('grants up to 2^53-1 exactly; a grant past it is refused with CreditOverflowError and writes nothing', async () => {
    const user = uid('user');
    const max = Number.MAX_SAFE_INTEGER;
    await grantCredits(ctx.database, user, max - 10);
    expect(await grantCredits(ctx.database, user, 10)).toEqual({ balance: max });
    const before = await footprint(ctx.database, user);
    const error = await grantCredits(ctx.database, user, 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(CreditOverflowError);
    expect(error).toMatchObject({ userId: user, amount: 1, held: max, max });
    expect((error as Error).message).toContain('would overflow');
    expect(await footprint(ctx.database, user)).toEqual(before);
    expect(await replayLedger(ctx.database, user)).toEqual({ balance: max, reserved: 0 });
    // A new user is refused too, and gets no account row.
    const fresh = uid('user');
    await expect(grantCredits(ctx.database, fresh, max + 1)).rejects.toThrow(RangeError);
    expect((await footprint(ctx.database, fresh)).account).toBeNull();
  });

  it('what a job holds counts: a grant that a later release would push past 2^53-1 is refused', async () => {
    const max = Number.MAX_SAFE_INTEGER;
    const price = 2 ** 40;
    // Everything granted, then 3 images reserved: balance + reserved is still max.
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [3], pricePerImage: price, credits: max });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: max - 3 * price, reserved: 3 * price });
    await expect(grantCredits(ctx.database, userId, 1)).rejects.toBeInstanceOf(CreditOverflowError);
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    // The release put 2 prices back: the balance is exact and at most max.
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: max - price, reserved: 0 });
    expect(await grantCredits(ctx.database, userId, price)).toEqual({ balance: max });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: max, reserved: 0 });
  });

  it('a price of 2^40 per image: reservation, captures and release are exact past int4 and near 2^53', async () => {
    const price = 2 ** 40;
    const granted = 2 ** 52 + 7;
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [2, 3], pricePerImage: price, credits: granted });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: granted - 5 * price, reserved: 5 * price });

    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    await deliverSlot(ctx.database, deliveryOf(jobId, 1, 0));
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: granted - 5 * price, reserved: 3 * price });

    const finished = await finishJob(ctx.database, jobId, await resultFromDatabase(ctx.database, jobId));
    expect(finished).toEqual({ reserved: 5 * price, captured: 2 * price, released: 3 * price });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: granted - 2 * price, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: granted - 2 * price, reserved: 0 });
    const job = await loadJob(ctx.database, jobId);
    expect(job?.pricePerImage).toBe(price);
    expect(job?.credits).toEqual({ reserved: 5 * price, captured: 2 * price, released: 3 * price });
    const amounts = await ctx.database.db.selectFrom('credit_ledger').select(['kind', 'amount']).where('job_id', '=', jobId).orderBy('id').execute();
    expect(amounts).toEqual([
      { kind: 'reserve', amount: 5 * price },
      { kind: 'capture', amount: price },
      { kind: 'capture', amount: price },
      { kind: 'release', amount: 3 * price },
    ]);
  });

  it('both drivers read bigint as a number, and refuse (not round) one beyond 2^53-1', async () => {
    const row = await sql<{ n: unknown; sum: unknown }>`select ${'9007199254740991'}::bigint as n, (select sum(x)::bigint from (values (1::bigint), (2::bigint)) t(x)) as sum`.execute(ctx.database.db);
    expect(row.rows).toEqual([{ n: Number.MAX_SAFE_INTEGER, sum: 3 }]);
    await expect(sql`select ${'9007199254740993'}::bigint as n`.execute(ctx.database.db)).rejects.toThrow(/beyond Number.MAX_SAFE_INTEGER/);
    // The connection is still usable afterwards.
    expect((await sql<{ n: unknown }>`select 1::bigint as n`.execute(ctx.database.db)).rows).toEqual([{ n: 1 }]);
  });

  it('a job whose price does not fit in 2^53-1 is refused before SQL', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, Number.MAX_SAFE_INTEGER);
    const inputId = await inputAttachment(ctx.database, userId);
    await expect(submitJob(ctx.database, { spec: makeSpec(userId, [1000], inputId), pricePerImage: 2 ** 50 })).rejects.toThrow(RangeError);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: Number.MAX_SAFE_INTEGER, reserved: 0 });
  });

  it('submit reserves the full price, each delivery captures one image, finish releases the rest once', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [2, 3], pricePerImage: 7, credits: 100 });
    // 5 images x 7 = 35 reserved.
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 65, reserved: 35 });

    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 0));
    await deliverSlot(ctx.database, deliveryOf(jobId, 1, 2));
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 65, reserved: 21 });

    const result = await resultFromDatabase(ctx.database, jobId);
    expect(result.status).toBe('partial');
    const first = await finishJob(ctx.database, jobId, result);
    expect(first).toEqual({ reserved: 35, captured: 14, released: 21 });
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 86, reserved: 0 });

    // Finishing again releases nothing more.
    const second = await finishJob(ctx.database, jobId, result);
    expect(second).toEqual(first);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 86, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 86, reserved: 0 });

    const kinds = await ctx.database.db
      .selectFrom('credit_ledger')
      .select(['kind', 'amount'])
      .where('job_id', '=', jobId)
      .orderBy('id')
      .execute();
    expect(kinds).toEqual([
      { kind: 'reserve', amount: 35 },
      { kind: 'capture', amount: 7 },
      { kind: 'capture', amount: 7 },
      { kind: 'release', amount: 21 },
    ]);
    const job = await loadJob(ctx.database, jobId);
    expect(job?.status).toBe('partial');
    expect(job?.credits).toEqual({ reserved: 35, captured: 14, released: 21 });
  });

  it(raceTitle(ctx.kind, 'finishing twice concurrently releases once'), async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [4], pricePerImage: 5, credits: 20 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    const result = await resultFromDatabase(ctx.database, jobId);
    // PostgreSQL: both transactions are open and wait on the job row; the second finds the job final.
    const settled = await raceCalls(ctx, { table: 'jobs', where: { id: jobId } }, [[() => finishJob(ctx.database, jobId, result), () => finishJob(ctx.database, jobId, result)]]);
    const outcomes = settled.map((r) => (r.status === 'fulfilled' ? r.value : r.reason));
    expect(outcomes).toEqual([
      { reserved: 20, captured: 5, released: 15 },
      { reserved: 20, captured: 5, released: 15 },
    ]);
    const releases = await ctx.database.db.selectFrom('credit_ledger').select('amount').where('job_id', '=', jobId).where('kind', '=', 'release').execute();
    expect(releases).toEqual([{ amount: 15 }]);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 15, reserved: 0 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 15, reserved: 0 });
  });

  it('a user who cannot cover the price is refused and nothing is written', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 29);
    const inputId = await inputAttachment(ctx.database, userId);
    const before = await footprint(ctx.database, userId);
    const spec = makeSpec(userId, [1, 2], inputId);

    const error = await submitJob(ctx.database, { spec, pricePerImage: 10 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientCreditsError);
    expect(error).toMatchObject({ required: 30, available: 29 });

    expect(await footprint(ctx.database, userId)).toEqual(before);
    expect(await loadJob(ctx.database, spec.jobId ?? '')).toBeNull();
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 29, reserved: 0 });
  });

  it('a user with no account at all is refused and gets no account row', async () => {
    const userId = uid('user');
    // An input attachment needs no account.
    const inputId = await inputAttachment(ctx.database, userId);
    await expect(submitJob(ctx.database, { spec: makeSpec(userId, [1], inputId), pricePerImage: 1 })).rejects.toBeInstanceOf(
      InsufficientCreditsError,
    );
    expect((await footprint(ctx.database, userId)).account).toBeNull();
  });

  it(raceTitle(ctx.kind, 'parallel submits of one user never spend more than the balance'), async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const inputId = await inputAttachment(ctx.database, userId);
    // 8 jobs of 30 credits each: exactly 3 fit into 100. PostgreSQL: all 8 transactions wait on the
    // user's account row (held by the test), so each reads the balance the ones before it left.
    const outcomes = await raceCalls(
      ctx,
      { table: 'credit_accounts', where: { user_id: userId } },
      [Array.from({ length: 8 }, () => () => submitJob(ctx.database, { spec: makeSpec(userId, [3], inputId), pricePerImage: 10 }))],
    );
    const accepted = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o) => o.status === 'rejected');
    expect(accepted).toHaveLength(3);
    for (const r of refused) expect((r as PromiseRejectedResult).reason).toBeInstanceOf(InsufficientCreditsError);
    expect(await getBalance(ctx.database, userId)).toEqual({ balance: 10, reserved: 90 });
    expect(await replayLedger(ctx.database, userId)).toEqual({ balance: 10, reserved: 90 });
  });
});

describe('credits: schema backstop', () => {
  forEachDatabase('balance check constraint', (ctx) => {
    it('the database itself refuses a negative balance', async () => {
      const userId = uid('user');
      await grantCredits(ctx.database, userId, 5);
      await expect(
        ctx.database.db.updateTable('credit_accounts').set({ balance: -1 }).where('user_id', '=', userId).execute(),
      ).rejects.toThrow(/check constraint/);
    });
  });
});

for (const kind of DATABASE_KINDS) {
  const skipped = kind === 'postgres' && !TEST_DATABASE_URL;
  // Skipped only for the PostgreSQL leg without DATABASE_URL (no server to migrate).
  const run = skipped ? describe.skip : describe;
  run(`credits: migration 0004_credit_bigint [${kind}]`, () => {
    let scratch: ScratchDatabase | undefined;
    afterEach(async () => {
      await scratch?.dispose();
      scratch = undefined;
    });

    it('turns every credit column into bigint and keeps the amounts already stored', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const before = Object.fromEntries(Object.entries(MIGRATIONS).filter(([name]) => name < '0004'));
      const old = await openDatabase(scratch.config, { migrations: before });
      let userId: string;
      try {
        ({ userId } = await seedJob(old, { quantities: [2], pricePerImage: 3, credits: 2 ** 31 - 1 }));
      } finally {
        await old.close();
      }
      const upgraded = await openDatabase(scratch.config);
      try {
        const types = await sql<{ table_name: string; column_name: string; data_type: string }>`
          select table_name, column_name, data_type from information_schema.columns
          where table_schema = 'public' and (table_name, column_name) in (
            ('credit_accounts', 'balance'), ('credit_accounts', 'reserved'), ('credit_ledger', 'amount'),
            ('jobs', 'price_per_image'), ('jobs', 'credits_reserved'), ('jobs', 'credits_captured'), ('jobs', 'credits_released'))
          order by table_name, column_name`.execute(upgraded.db);
        expect(types.rows).toHaveLength(7);
        for (const row of types.rows) expect(row, `${row.table_name}.${row.column_name}`).toMatchObject({ data_type: 'bigint' });
        const accounts = await upgraded.db.selectFrom('credit_accounts').select(['balance', 'reserved']).execute();
        expect(accounts).toEqual([{ balance: 2 ** 31 - 1 - 6, reserved: 6 }]);
        const jobs = await upgraded.db.selectFrom('jobs').select(['price_per_image', 'credits_reserved', 'credits_captured', 'credits_released']).execute();
        expect(jobs).toEqual([{ price_per_image: 3, credits_reserved: 6, credits_captured: 0, credits_released: 0 }]);
        // And the upgraded balance can now grow past int4.
        expect(await grantCredits(upgraded, userId, 2 ** 31)).toEqual({ balance: 2 ** 31 - 1 - 6 + 2 ** 31 });
      } finally {
        await upgraded.close();
      }
    });
  });
}
