import { describe, expect, it } from 'vitest';
import {
  deliverSlot,
  finishJob,
  getBalance,
  grantCredits,
  InsufficientCreditsError,
  loadJob,
  replayLedger,
  submitJob,
} from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
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

  it('finishing twice concurrently releases once', async () => {
    const { userId, jobId } = await seedJob(ctx.database, { quantities: [4], pricePerImage: 5, credits: 20 });
    await deliverSlot(ctx.database, deliveryOf(jobId, 0, 1));
    const result = await resultFromDatabase(ctx.database, jobId);
    const outcomes = await Promise.all([finishJob(ctx.database, jobId, result), finishJob(ctx.database, jobId, result)]);
    expect(outcomes).toEqual([
      { reserved: 20, captured: 5, released: 15 },
      { reserved: 20, captured: 5, released: 15 },
    ]);
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

  it('parallel submits of one user never spend more than the balance', async () => {
    const userId = uid('user');
    await grantCredits(ctx.database, userId, 100);
    const inputId = await inputAttachment(ctx.database, userId);
    // 12 jobs of 30 credits each: exactly 3 fit into 100.
    const outcomes = await Promise.allSettled(
      Array.from({ length: 12 }, () => submitJob(ctx.database, { spec: makeSpec(userId, [3], inputId), pricePerImage: 10 })),
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
