import { sql, type Kysely } from 'kysely';
import { afterEach, describe, expect, it } from 'vitest';
import { lastValueFrom, toArray } from 'rxjs';
import { attemptFailedNotification, deliverSlot, finishAttempt, finishJob, MIGRATIONS, MigrationError, openDatabase, readJobEvents, startAttempt, type Database } from '../../src/db/index.js';
import { followJobEvents } from '../../src/sources/job-events.js';
import { createScratchDatabase, DATABASE_KINDS, TEST_DATABASE_URL, type ScratchDatabase } from '../support/databases.js';
import { deliveryOf, resultFromDatabase, seedJob } from './fixtures.js';

const broken = {
  ...MIGRATIONS,
  '0002_broken': {
    async up(db: Kysely<unknown>) {
      await sql`create table half_done (id int)`.execute(db);
      await sql`select * from table_that_does_not_exist`.execute(db);
    },
  },
};

for (const kind of DATABASE_KINDS) {
  const skipped = kind === 'postgres' && !TEST_DATABASE_URL;
  if (skipped) console.warn(`migrations [${kind}]: PostgreSQL leg skipped: DATABASE_URL not set`);
  // Skipped only for the PostgreSQL leg without DATABASE_URL (no server to migrate); warned above.
  const run = skipped ? describe.skip : describe;
  run(`migrations [${kind}]`, () => {
    let scratch: ScratchDatabase | undefined;
    afterEach(async () => {
      await scratch?.dispose();
      scratch = undefined;
    });

    it('a failed migration throws MigrationError naming it, and rolls the whole run back', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const error = await openDatabase(scratch.config, { migrations: broken }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MigrationError);
      expect(error).toMatchObject({ migration: '0002_broken' });
      expect((error as Error).message).toMatch(/migration "0002_broken" failed and was rolled back: .*table_that_does_not_exist/);

      // All migrations ran in one transaction: not even 0001 is left behind.
      const database = await openDatabase(scratch.config, { migrations: {} });
      try {
        const tables = await sql<{ name: string }>`
          select table_name as name from information_schema.tables
          where table_schema = 'public' and table_name in ('jobs', 'half_done')`.execute(database.db);
        expect(tables.rows).toEqual([]);
      } finally {
        await database.close();
      }
    });

    // PostgreSQL only: PGlite has no idle-in-transaction timeout (one process, one session).
    if (kind === 'postgres') it('migrations run in a session without the idle-in-transaction timeout (a starved process would lose them); queries run with it', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const seen: string[] = [];
      const probe = {
        ...MIGRATIONS,
        '9999_probe': {
          async up(db: Kysely<unknown>) {
            seen.push((await sql<{ t: string }>`select current_setting('idle_in_transaction_session_timeout') as t`.execute(db)).rows[0]?.t ?? '');
          },
        },
      };
      const database = await openDatabase(scratch.config, { migrations: probe });
      try {
        expect(seen).toEqual(['0']);
        const pooled = await sql<{ t: string }>`select current_setting('idle_in_transaction_session_timeout') as t`.execute(database.db);
        expect(pooled.rows[0]?.t).toBe('10s');
      } finally {
        await database.close();
      }
    });

    it("a user's jobs page reads the composite index in order: no sort of all the user's jobs", async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const database = await openDatabase(scratch.config);
      try {
        const plan = await database.db.transaction().execute(async (trx) => {
          // The table is tiny here: make the planner show which index can serve the order.
          await sql`set local enable_seqscan = off`.execute(trx);
          const explained = await sql<{ 'QUERY PLAN': unknown }>`explain (format json)
            select id from jobs where user_id = 'u' and (created_at, id) < (now(), 'z') order by created_at desc, id desc limit 21`.execute(trx);
          return JSON.stringify(explained.rows[0]?.['QUERY PLAN']);
        });
        expect(plan).toContain('jobs_by_user_created');
        expect(plan).not.toContain('"Node Type":"Sort"');
      } finally {
        await database.close();
      }
    });

    it('0013 (deliver_slot) applies over a database at 0012 holding a job with a started slot: it fills that slot once; its down drops the function, its up makes it again', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const upTo0012 = Object.fromEntries(Object.entries(MIGRATIONS).filter(([name]) => name < '0013'));
      const exists = async (db: Database['db']) =>
        (await sql<{ f: string | null }>`select to_regproc('deliver_slot')::text as f`.execute(db)).rows[0]?.f ?? null;
      const old = await openDatabase(scratch.config, { migrations: upTo0012 });
      let jobId: string;
      try {
        expect(await exists(old.db)).toBeNull();
        ({ jobId } = await seedJob(old, { quantities: [2], pricePerImage: 1 }));
        // Slot 0 started before the migration (its row, as startAttempt writes it).
        await sql`insert into slots (job_id, stage_index, slot_index) values (${jobId}, 0, 0)`.execute(old.db);
      } finally {
        await old.close();
      }
      const database = await openDatabase(scratch.config);
      try {
        expect(await exists(database.db)).toBe('deliver_slot');
        const delivered = await deliverSlot(database, deliveryOf(jobId, 0, 0));
        expect(delivered.duplicate).toBe(false);
        expect((await deliverSlot(database, deliveryOf(jobId, 0, 0, 2))).attachId).toBe(delivered.attachId);
        const migration = MIGRATIONS['0013_deliver_slot_function']!;
        await migration.down!(database.db as unknown as Kysely<unknown>);
        expect(await exists(database.db)).toBeNull();
        await migration.up(database.db as unknown as Kysely<unknown>);
        expect((await deliverSlot(database, deliveryOf(jobId, 0, 1))).duplicate).toBe(false);
      } finally {
        await database.close();
      }
    });

    it('0014 (fail_attempt) applies over a database at 0013 holding a started attempt: the failure is recorded and logged once; its down drops the function, its up makes it again', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const upTo0013 = Object.fromEntries(Object.entries(MIGRATIONS).filter(([name]) => name < '0014'));
      const exists = async (db: Database['db']) =>
        (await sql<{ f: string | null }>`select to_regproc('fail_attempt')::text as f`.execute(db)).rows[0]?.f ?? null;
      const old = await openDatabase(scratch.config, { migrations: upTo0013 });
      let jobId: string;
      try {
        expect(await exists(old.db)).toBeNull();
        ({ jobId } = await seedJob(old, { quantities: [2] }));
        await startAttempt(old, { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 });
      } finally {
        await old.close();
      }
      const failure = (slot: number) => ({
        jobId, stageIndex: 0, slotIndex: slot, attempt: 1, outcome: 'failed' as const, errorClass: 'overloaded', httpStatus: 503, message: 'busy', latencyMs: 9, usage: null,
        event: attemptFailedNotification({ type: 'attempt:failed', jobId, at: 0, stage: 0, slot, attempt: 1, errorClass: 'overloaded', message: 'busy', httpStatus: 503, latencyMs: 9, providerLatencyMs: 9, willRetry: true, delayMs: 10 }),
      });
      const database = await openDatabase(scratch.config);
      try {
        expect(await exists(database.db)).toBe('fail_attempt');
        await finishAttempt(database, failure(0));
        await finishAttempt(database, failure(0));
        expect((await readJobEvents(database, jobId)).map((e) => [e.seq, e.event.type])).toEqual([[1, 'attempt:failed']]);
        const migration = MIGRATIONS['0014_fail_attempt_function']!;
        await migration.down!(database.db as unknown as Kysely<unknown>);
        expect(await exists(database.db)).toBeNull();
        await migration.up(database.db as unknown as Kysely<unknown>);
        await startAttempt(database, { jobId, stageIndex: 0, slotIndex: 1, attempt: 1 });
        await finishAttempt(database, failure(1));
        expect((await readJobEvents(database, jobId)).map((e) => [e.seq, e.event.type])).toEqual([[1, 'attempt:failed'], [2, 'attempt:failed']]);
      } finally {
        await database.close();
      }
    });

    it('0006 (the job event log) applies over a database at 0005: a job submitted before it starts its log at 1', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const upTo0005 = Object.fromEntries(Object.entries(MIGRATIONS).filter(([name]) => name < '0006'));
      expect(Object.keys(upTo0005)).toEqual(['0001_initial', '0002_job_lease', '0003_abandoned_attempts', '0004_credit_bigint', '0005_fleet']);
      const before = await openDatabase(scratch.config, { migrations: upTo0005 });
      let jobId: string;
      let endedJobId: string;
      try {
        ({ jobId } = await seedJob(before, { quantities: [2] }));
        // A job that ended before the log existed (as 0005's code left it: no event anywhere).
        ({ jobId: endedJobId } = await seedJob(before, { quantities: [1] }));
        await sql`update jobs set status = 'cancelled', finished_at = now() where id = ${endedJobId}`.execute(before.db);
        const table = await sql<{ present: boolean }>`select to_regclass('job_events') is not null as present`.execute(before.db);
        expect(table.rows).toEqual([{ present: false }]);
      } finally {
        await before.close();
      }

      const after = await openDatabase(scratch.config);
      try {
        const applied = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(after.db);
        expect(applied.rows.map((r) => r.name)).toEqual(Object.keys(MIGRATIONS));
        expect(await after.db.selectFrom('jobs').select('event_seq').where('id', '=', jobId).executeTakeFirstOrThrow()).toEqual({ event_seq: 0 });
        expect(await readJobEvents(after, jobId)).toEqual([]);
        // Followed, it has nothing to tell and completes: it ended, and every logged event (none) is out.
        expect(await lastValueFrom(followJobEvents(after, endedJobId).pipe(toArray()))).toEqual([]);
        await deliverSlot(after, deliveryOf(jobId, 0, 0));
        await finishJob(after, jobId, await resultFromDatabase(after, jobId));
        const log = await lastValueFrom(followJobEvents(after, jobId).pipe(toArray()));
        expect(log.map((e) => [e.seq, e.event.type])).toEqual([
          [1, 'slot:delivered'],
          [2, 'stage:short'],
          [3, 'job:finished'],
        ]);
      } finally {
        await after.close();
      }
    });

    it('migrations run once: reopening applies nothing twice and keeps the data', async () => {
      scratch = await createScratchDatabase(kind, { persistent: true });
      const first = await openDatabase(scratch.config);
      await first.db.insertInto('credit_accounts').values({ user_id: 'u1', balance: 3 }).execute();
      await first.close();
      const second = await openDatabase(scratch.config);
      try {
        const row = await second.db.selectFrom('credit_accounts').select('balance').where('user_id', '=', 'u1').executeTakeFirst();
        expect(row).toEqual({ balance: 3 });
        const applied = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(second.db);
        expect(applied.rows.map((r) => r.name)).toEqual(Object.keys(MIGRATIONS));
      } finally {
        await second.close();
      }
    });
  });
}
