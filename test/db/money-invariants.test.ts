import fc from 'fast-check';
import { expect, it } from 'vitest';
import {
  deliverSlot,
  finishJob,
  getBalance,
  grantCredits,
  InsufficientCreditsError,
  replayLedger,
  submitJob,
} from '../../src/db/index.js';
import { forEachDatabase } from '../support/databases.js';
import { deliveryOf, inputAttachment, makeSpec, resultFromDatabase, uid } from './fixtures.js';

/** One step of a random session of one user. Indexes are taken modulo what exists. */
type Step =
  | { readonly kind: 'submit'; readonly quantities: readonly number[]; readonly price: number }
  | { readonly kind: 'deliver'; readonly job: number; readonly stage: number; readonly slot: number }
  | { readonly kind: 'finish'; readonly job: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('submit' as const), quantities: fc.array(fc.integer({ min: 1, max: 3 }), { minLength: 1, maxLength: 3 }), price: fc.integer({ min: 0, max: 6 }) }),
  fc.record({ kind: fc.constant('deliver' as const), job: fc.nat(), stage: fc.nat(), slot: fc.nat() }),
  fc.record({ kind: fc.constant('deliver' as const), job: fc.nat(), stage: fc.nat(), slot: fc.nat() }),
  fc.record({ kind: fc.constant('finish' as const), job: fc.nat() }),
);

forEachDatabase('money invariants', (ctx) => {
  it('for any mix of submits, (duplicate) deliveries and finishes, money is conserved and the ledger replays to the balance', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 60 }), fc.array(step, { maxLength: 14 }), async (granted, steps) => {
        const userId = uid('user');
        if (granted > 0) await grantCredits(ctx.database, userId, granted);
        const input = await inputAttachment(ctx.database, userId);
        const jobs: { jobId: string; quantities: readonly number[]; price: number; finished: boolean; filled: Set<string> }[] = [];
        let modelBalance = granted;

        for (const s of steps) {
          if (s.kind === 'submit') {
            const spec = makeSpec(userId, s.quantities, input);
            const cost = s.price * s.quantities.reduce((a, b) => a + b, 0);
            const outcome = await submitJob(ctx.database, { spec, pricePerImage: s.price }).catch((e: unknown) => e);
            if (cost > modelBalance) {
              expect(outcome).toBeInstanceOf(InsufficientCreditsError);
            } else {
              expect(outcome).toMatchObject({ created: true });
              modelBalance -= cost;
              jobs.push({ jobId: spec.jobId ?? '', quantities: s.quantities, price: s.price, finished: false, filled: new Set() });
            }
          } else if (jobs.length > 0) {
            const job = jobs[s.job % jobs.length]!;
            if (s.kind === 'finish') {
              const credits = await finishJob(ctx.database, job.jobId, await resultFromDatabase(ctx.database, job.jobId));
              if (!job.finished) modelBalance += credits.released;
              job.finished = true;
              expect(credits.captured).toBe(job.filled.size * job.price);
              expect(credits.captured + credits.released).toBe(credits.reserved);
            } else {
              const stage = s.stage % job.quantities.length;
              const slot = s.slot % job.quantities[stage]!;
              const key = `${stage}/${slot}`;
              const outcome = await deliverSlot(ctx.database, deliveryOf(job.jobId, stage, slot)).catch((e: unknown) => e);
              if (job.filled.has(key)) expect(outcome).toMatchObject({ duplicate: true });
              else if (job.finished) expect(outcome).toBeInstanceOf(Error);
              else {
                expect(outcome).toMatchObject({ duplicate: false });
                job.filled.add(key);
              }
            }
          }
        }

        const balance = await getBalance(ctx.database, userId);
        const captured = jobs.reduce((sum, j) => sum + j.filled.size * j.price, 0);
        const held = jobs
          .filter((j) => !j.finished)
          .reduce((sum, j) => sum + j.price * j.quantities.reduce((a, b) => a + b, 0) - j.filled.size * j.price, 0);
        expect(balance).toEqual({ balance: modelBalance, reserved: held });
        expect(balance.balance + balance.reserved + captured).toBe(granted);
        expect(await replayLedger(ctx.database, userId)).toEqual(balance);
      }),
      { numRuns: 25 },
    );
  });
});
