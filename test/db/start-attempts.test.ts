/**
 * Attempt starts in one statement (`startAttempts`) and their group commit (`AttemptStarter`):
 * each start recorded as `startAttempt` records it, whatever shares its statement.
 */
import { sql, type KyselyPlugin, type PluginTransformResultArgs, type QueryResult, type RootOperationNode, type UnknownRow } from 'kysely';
import { expect, it } from 'vitest';
import { markJobRunning, startAttempt, startAttempts, type Database } from '../../src/db/index.js';
import { AttemptStarter, ATTEMPT_STARTS_PER_WRITE } from '../../src/sinks/attempt-starter.js';
import { forEachDatabase } from '../support/databases.js';
import { Statements } from '../support/statements.js';
import { seedJob } from './fixtures.js';

async function recorded(database: Database, jobId: string) {
  const slots = await database.db.selectFrom('slots').select(['stage_index', 'slot_index', 'attempts_used']).where('job_id', '=', jobId).orderBy('stage_index').orderBy('slot_index').execute();
  const attempts = await database.db.selectFrom('attempts').select(['stage_index', 'slot_index', 'attempt', 'outcome']).where('job_id', '=', jobId).orderBy('stage_index').orderBy('slot_index').orderBy('attempt').execute();
  const stages = await database.db.selectFrom('stages').select(['stage_index', 'status']).where('job_id', '=', jobId).orderBy('stage_index').execute();
  return { slots, attempts, stages };
}

forEachDatabase('attempt starts in one statement', (ctx) => {
  it('startAttempts writes what startAttempt writes, one start at a time or all at once', async () => {
    const one = await seedJob(ctx.database, { quantities: [3, 2] });
    const all = await seedJob(ctx.database, { quantities: [3, 2] });
    const starts = (jobId: string) => [
      { jobId, stageIndex: 0, slotIndex: 0, attempt: 1 },
      { jobId, stageIndex: 0, slotIndex: 2, attempt: 4 },
      { jobId, stageIndex: 1, slotIndex: 1, attempt: 2 },
    ];
    for (const { jobId } of [one, all]) {
      await markJobRunning(ctx.database, jobId);
      // An earlier run used slot 0/2 up to attempt 6: a replayed lower start never lowers it.
      await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: 2, attempt: 6 });
    }
    for (const start of starts(one.jobId)) await startAttempt(ctx.database, start);
    expect(await startAttempts(ctx.database, starts(all.jobId))).toEqual(new Set());
    const byOne = await recorded(ctx.database, one.jobId);
    expect(await recorded(ctx.database, all.jobId)).toEqual(byOne);
    expect(byOne.slots.map((s) => [s.stage_index, s.slot_index, s.attempts_used])).toEqual([[0, 0, 1], [0, 2, 6], [1, 1, 2]]);
    expect(byOne.stages.map((s) => s.status)).toEqual(['running', 'running']);
    // Idempotent: the same starts again change nothing.
    expect(await startAttempts(ctx.database, starts(all.jobId))).toEqual(new Set());
    expect(await recorded(ctx.database, all.jobId)).toEqual(byOne);
  });

  it('a start the job does not owe is reported by index and writes nothing; the others are written', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    const missing = await startAttempts(ctx.database, [
      { jobId, stageIndex: 0, slotIndex: 1, attempt: 1 },
      { jobId, stageIndex: 0, slotIndex: 2, attempt: 1 },
      { jobId, stageIndex: 5, slotIndex: 0, attempt: 1 },
      { jobId: 'no-such-job', stageIndex: 0, slotIndex: 0, attempt: 1 },
    ]);
    expect([...missing].sort()).toEqual([1, 2, 3]);
    expect((await recorded(ctx.database, jobId)).attempts.map((a) => [a.slot_index, a.attempt, a.outcome])).toEqual([[1, 1, 'started']]);
    expect((await sql<{ n: number }>`select count(*)::int as n from slots where job_id = 'no-such-job'`.execute(ctx.database.db)).rows[0]?.n).toBe(0);
  });

  it('refuses a slot given twice and an attempt below 1, before writing anything', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [2] });
    await expect(startAttempts(ctx.database, [{ jobId, stageIndex: 0, slotIndex: 0, attempt: 1 }, { jobId, stageIndex: 0, slotIndex: 0, attempt: 2 }])).rejects.toThrow(/given twice/);
    await expect(startAttempts(ctx.database, [{ jobId, stageIndex: 0, slotIndex: 1, attempt: 0 }])).rejects.toThrow(/attempt/);
    expect((await recorded(ctx.database, jobId)).attempts).toEqual([]);
  });

  it('AttemptStarter: starts that pile up while one is written go in one statement; each caller settles with its own', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [40] });
    const statements = new Statements();
    const starter = new AttemptStarter({ ...ctx.database, db: ctx.database.db.withPlugin(statements) });
    // 40 starts at once: the first is written alone, the rest pile up behind it (32 to a statement).
    await Promise.all(Array.from({ length: 40 }, (_, slotIndex) => starter.start({ jobId, stageIndex: 0, slotIndex, attempt: 1 })));
    expect(statements.count).toBe(1 + Math.ceil(39 / ATTEMPT_STARTS_PER_WRITE));
    const { slots, attempts } = await recorded(ctx.database, jobId);
    expect(slots).toHaveLength(40);
    expect(attempts.every((a) => a.outcome === 'started')).toBe(true);
    // A start the job does not owe fails with startAttempt's own error; the ones beside it are written.
    const settled = await Promise.allSettled([
      starter.start({ jobId, stageIndex: 0, slotIndex: 0, attempt: 2 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 1, attempt: 2 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 99, attempt: 1 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 2, attempt: 2 }),
    ]);
    expect(settled.map((s) => s.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled']);
    expect(String((settled[2] as PromiseRejectedResult).reason)).toMatch(/slot|99/);
    expect((await recorded(ctx.database, jobId)).attempts.filter((a) => a.attempt === 2).map((a) => a.slot_index)).toEqual([0, 1, 2]);
  });

  it('AttemptStarter: two starts of one slot never share a statement, and a failed statement fails each of its callers', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [3] });
    const starter = new AttemptStarter(ctx.database);
    await Promise.all([
      starter.start({ jobId, stageIndex: 0, slotIndex: 0, attempt: 1 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 1, attempt: 1 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 1, attempt: 2 }),
      starter.start({ jobId, stageIndex: 0, slotIndex: 2, attempt: 1 }),
    ]);
    expect((await recorded(ctx.database, jobId)).slots.map((s) => s.attempts_used)).toEqual([1, 2, 1]);
    const broken = new AttemptStarter({ ...ctx.database, db: ctx.database.db.withPlugin(new FailingStatements()) });
    const settled = await Promise.allSettled([0, 1, 2].map((slotIndex) => broken.start({ jobId, stageIndex: 0, slotIndex, attempt: 5 })));
    expect(settled.map((s) => (s.status === 'rejected' ? String(s.reason) : 'written'))).toEqual(Array(3).fill('Error: the database is away'));
  });
});

/** Fails every statement, as a database that went away. */
class FailingStatements implements KyselyPlugin {
  transformQuery(): RootOperationNode {
    throw new Error('the database is away');
  }
  transformResult({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return Promise.resolve(result);
  }
}
