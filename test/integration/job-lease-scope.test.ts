import { EMPTY, NEVER, Subject, concat, defer, firstValueFrom, lastValueFrom, of, toArray } from 'rxjs';
import { describe, expect, it } from 'vitest';
import { JobLeasedError } from '../../src/db/errors.js';
import { claimJobLease } from '../../src/db/ops/job-lease.js';
import { usingJobLease, type JobLease } from '../../src/streams/job-lease-scope.js';
import { forEachDatabase } from '../support/databases.js';
import { seedJob } from '../db/fixtures.js';

const TTL = 60_000;

forEachDatabase('usingJobLease: the lease is held while the scope lives and released exactly once on every path', (ctx) => {
  const holder = async (jobId: string) =>
    (await ctx.database.db.selectFrom('jobs').select('lease_owner').where('id', '=', jobId).executeTakeFirstOrThrow()).lease_owner;
  const until = async (check: () => Promise<boolean>) => {
    for (let i = 0; i < 100 && !(await check()); i++) await new Promise((r) => setTimeout(r, 10));
  };

  describe('paths', () => {
    it('complete: the body releases before its last value; the teardown does not release again', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      const seen: (string | null)[] = [];
      const values = await lastValueFrom(
        usingJobLease(ctx.database, jobId, { owner: 'me:1:a', ttlMs: TTL }, (lease) =>
          defer(async () => {
            seen.push(await holder(jobId));
            await lease.release();
            seen.push(await holder(jobId));
            // Another runner takes the job now: a second release by this scope would not free it anyway,
            // and the teardown must leave it alone.
            await claimJobLease(ctx.database, jobId, 'next:1:b', TTL);
            return 'done';
          }),
        ).pipe(toArray()),
      );
      expect(values).toEqual(['done']);
      expect(seen).toEqual(['me:1:a', null]);
      await new Promise((r) => setTimeout(r, 50));
      expect(await holder(jobId)).toBe('next:1:b');
    });

    it('complete without a release in the body: released at teardown', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      await lastValueFrom(usingJobLease(ctx.database, jobId, { owner: 'me:1:c', ttlMs: TTL }, () => of(1)));
      await until(async () => (await holder(jobId)) === null);
      expect(await holder(jobId)).toBeNull();
    });

    it('error: released before the error is passed on', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      const boom = new Error('boom');
      const error = await lastValueFrom(usingJobLease(ctx.database, jobId, { owner: 'me:1:d', ttlMs: TTL }, () => defer(async () => Promise.reject(boom)))).catch(
        (e: unknown) => e,
      );
      expect(error).toBe(boom);
      // No waiting: the lease is free when the error arrives.
      expect(await holder(jobId)).toBeNull();
    });

    it('unsubscribe: released at teardown', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      const started = new Subject<void>();
      const subscription = usingJobLease(ctx.database, jobId, { owner: 'me:1:e', ttlMs: TTL }, () => concat(defer(async () => started.next()), NEVER)).subscribe();
      await firstValueFrom(started);
      expect(await holder(jobId)).toBe('me:1:e');
      subscription.unsubscribe();
      await until(async () => (await holder(jobId)) === null);
      expect(await holder(jobId)).toBeNull();
    });

    it('unsubscribe while the claim is in flight: released once the claim lands, the body never runs', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      let ran = false;
      const subscription = usingJobLease(ctx.database, jobId, { owner: 'me:1:f', ttlMs: TTL }, () => {
        ran = true;
        return EMPTY;
      }).subscribe();
      subscription.unsubscribe();
      await new Promise((r) => setTimeout(r, 100));
      await until(async () => (await holder(jobId)) === null);
      expect(await holder(jobId)).toBeNull();
      expect(ran).toBe(false);
    });

    it('a refused claim errors the scope and leaves the other runner its lease', async () => {
      const { jobId } = await seedJob(ctx.database, { quantities: [1] });
      await claimJobLease(ctx.database, jobId, 'other-host:1:x', TTL);
      let ran = false;
      const error = await lastValueFrom(
        usingJobLease(ctx.database, jobId, { owner: 'me:1:g', ttlMs: TTL }, () => {
          ran = true;
          return EMPTY;
        }),
        { defaultValue: null },
      ).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(JobLeasedError);
      expect(ran).toBe(false);
      await new Promise((r) => setTimeout(r, 50));
      expect(await holder(jobId)).toBe('other-host:1:x');
    });
  });

  it('renews while held; lost$ emits once when another runner took the lease, and stays quiet when released', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [1] });
    const ttlMs = 150;
    let kept!: JobLease;
    const stolen = usingJobLease(ctx.database, jobId, { owner: 'me:1:h', ttlMs }, (lease) =>
      defer(async () => {
        // Renewed every ttl/3: after several TTLs it is still ours.
        await new Promise((r) => setTimeout(r, ttlMs * 3));
        const heldAfterTtls = await holder(jobId);
        // Another runner takes the job (as if this process had stalled past the TTL).
        await ctx.database.db.updateTable('jobs').set({ lease_owner: 'thief:1:z' }).where('id', '=', jobId).execute();
        await firstValueFrom(lease.lost$);
        const stillHeld = await lease.stillHeld();
        await lease.release();
        return { heldAfterTtls, stillHeld };
      }),
    );
    expect(await lastValueFrom(stolen)).toEqual({ heldAfterTtls: 'me:1:h', stillHeld: false });
    // Releasing does not free a lease that is no longer ours.
    expect(await holder(jobId)).toBe('thief:1:z');

    const { jobId: other } = await seedJob(ctx.database, { quantities: [1] });
    const lost = await lastValueFrom(
      usingJobLease(ctx.database, other, { owner: 'me:1:i', ttlMs }, (lease) => {
        kept = lease;
        return defer(async () => {
          await lease.release();
          return 'released';
        });
      }),
    );
    expect(lost).toBe('released');
    expect(await lastValueFrom(kept.lost$.pipe(toArray()))).toEqual([]);
  });
});
