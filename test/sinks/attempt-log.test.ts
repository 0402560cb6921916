/**
 * The attempt log (src/sinks/attempt-log.ts) and `finishAttempts`: the records that pile up
 * while a write runs go in one statement; a failure with its event is a write of its own (its
 * transaction appends the event); order and every row's facts are as one write each would
 * leave them. Real databases (PGlite and PostgreSQL); statements counted with a kysely plugin.
 */
import { sql, ValuesNode, type KyselyPlugin, type PluginTransformQueryArgs, type PluginTransformResultArgs, type QueryResult, type RootOperationNode, type UnknownRow } from 'kysely';
import { expect, it } from 'vitest';
import { finishAttempt, finishAttempts, readJobEvents, startAttempt, type Database, type FinishAttemptOptions } from '../../src/db/index.js';
import type { AttemptFailedEvent, SlotDeliveredEvent } from '../../src/domain/events.js';
import { ATTEMPT_RECORDS_PER_WRITE, AttemptLog } from '../../src/sinks/attempt-log.js';
import { forEachDatabase } from '../support/databases.js';
import { seedJob, until } from '../db/fixtures.js';

/** Counts the statements that write `attempts` rows, with the rows each wrote (a call of `fail_attempt`, migration 0014, writes one). */
class AttemptWrites implements KyselyPlugin {
  readonly rowsPerStatement: number[] = [];
  transformQuery({ node }: PluginTransformQueryArgs): RootOperationNode {
    if (node.kind === 'InsertQueryNode' && node.into?.table.identifier.name === 'attempts') {
      const values = node.values;
      this.rowsPerStatement.push(values && ValuesNode.is(values) ? values.values.length : 0);
    }
    if (node.kind === 'RawNode' && node.sqlFragments.join('').includes('fail_attempt(')) this.rowsPerStatement.push(1);
    return node;
  }
  transformResult({ result }: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return Promise.resolve(result);
  }
}

const delivered = (jobId: string, slot: number, attempt = 1): SlotDeliveredEvent => ({
  type: 'slot:delivered', jobId, at: Date.now(), stage: 0, slot, attempt, attachId: `a-${slot}-${attempt}`, latencyMs: 100 + slot, providerLatencyMs: 80,
  usage: { promptTokens: 10, outputTokens: 1290, totalTokens: 1300 }, stageProgress: { delivered: 1, total: 8 }, progress: { delivered: 1, total: 8 },
});
const failed = (jobId: string, slot: number, attempt = 1): AttemptFailedEvent => ({
  type: 'attempt:failed', jobId, at: Date.now(), stage: 0, slot, attempt, errorClass: 'overloaded', message: 'the model is overloaded', httpStatus: 503,
  latencyMs: 40, providerLatencyMs: 40, willRetry: true, delayMs: 100, usage: null,
});

const rowsOf = async (database: Database, jobId: string) =>
  (await sql<Record<string, unknown>>`select slot_index, attempt, outcome, error_class, http_status, message, latency_ms, prompt_tokens, output_tokens, total_tokens from attempts where job_id = ${jobId} order by slot_index, attempt`.execute(database.db)).rows;

forEachDatabase('the attempt log writes piled-up records in one statement', (ctx) => {
  it('records that arrive while a write runs go in the next write together; a failure with its event is a write of its own; the rows and the event log as one write each', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [8] });
    for (let slot = 0; slot < 6; slot++) await startAttempt(ctx.database, { jobId, stageIndex: 0, slotIndex: slot, attempt: 1 });
    const writes = new AttemptWrites();
    const log = new AttemptLog({ ...ctx.database, db: ctx.database.db.withPlugin(writes) }, undefined);
    // d0 starts a write at once; d1, f2 (with its event), d3, d4, d5 arrive while it runs.
    log.record(delivered(jobId, 0), false);
    log.record(delivered(jobId, 1), false);
    log.record(failed(jobId, 2), false);
    for (const slot of [3, 4, 5]) log.record(delivered(jobId, slot), false);
    log.record({ type: 'job:started', jobId, at: Date.now() } as never, false);
    await log.flush();
    expect(writes.rowsPerStatement).toEqual([1, 1, 1, 3]);
    const rows = await rowsOf(ctx.database, jobId);
    expect(rows.map((row) => [row['slot_index'], row['outcome'], row['error_class']])).toEqual([
      [0, 'delivered', null], [1, 'delivered', null], [2, 'failed', 'overloaded'], [3, 'delivered', null], [4, 'delivered', null], [5, 'delivered', null],
    ]);
    expect(rows[4]).toMatchObject({ latency_ms: 104, http_status: null, message: null, prompt_tokens: 10, output_tokens: 1290, total_tokens: 1300 });
    expect(rows[2]).toMatchObject({ http_status: 503, message: 'the model is overloaded', latency_ms: 40 });
    const events = (await readJobEvents(ctx.database, jobId)).map((envelope) => envelope.event);
    expect(events.filter((event) => event.type === 'attempt:failed')).toEqual([expect.objectContaining({ slot: 2, attempt: 1, errorClass: 'overloaded' })]);
    // Nothing queued: flush resolves at once, and a later record starts a write again.
    await log.flush();
    log.record(delivered(jobId, 6), false);
    await log.flush();
    expect(writes.rowsPerStatement).toEqual([1, 1, 1, 3, 1]);
  });

  it('with a gap, records that come after a write (not only during it) wait for one another: a steady trickle is written a few to a statement', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [12] });
    const writes = new AttemptWrites();
    const log = new AttemptLog({ ...ctx.database, db: ctx.database.db.withPlugin(writes) }, undefined, { gapMs: 2_000 });
    log.record(delivered(jobId, 0), false);
    // d0 is written at once; the next come one at a time, each after the previous write is done.
    await until(() => writes.rowsPerStatement.length === 1);
    for (let slot = 1; slot < 12; slot++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      log.record(delivered(jobId, slot), false);
    }
    // Without the gap each would be a write of its own; with it, they wait for the gap's end.
    expect(writes.rowsPerStatement).toEqual([1]);
    const flushed = log.flush();
    await until(() => writes.rowsPerStatement.length === 2);
    expect(writes.rowsPerStatement).toEqual([1, 11]);
    await flushed;
    expect(await rowsOf(ctx.database, jobId)).toHaveLength(12);
  }, 30_000);

  it('flush does not wait for the gap: what is queued is written at once, and the next gaps are skipped until the queue is empty', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    const writes = new AttemptWrites();
    const log = new AttemptLog({ ...ctx.database, db: ctx.database.db.withPlugin(writes) }, undefined, { gapMs: 600_000 });
    log.record(delivered(jobId, 0), false);
    await until(() => writes.rowsPerStatement.length === 1);
    log.record(delivered(jobId, 1), false);
    log.record(failed(jobId, 2), false);
    log.record(delivered(jobId, 3), false);
    // The log waits out a ten-minute gap now; the test's own timeout (30 s) is far shorter.
    await log.flush();
    expect(writes.rowsPerStatement).toEqual([1, 1, 1, 1]);
    expect(await rowsOf(ctx.database, jobId)).toHaveLength(4);
    // After the flush, a record starts a write at once and the gap is kept again.
    log.record(delivered(jobId, 3, 2), false);
    await until(() => writes.rowsPerStatement.length === 5);
    log.record(delivered(jobId, 2, 2), false);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(writes.rowsPerStatement).toHaveLength(5);
    await log.flush();
    expect(writes.rowsPerStatement).toEqual([1, 1, 1, 1, 1, 1]);
  }, 30_000);

  it(`a long pile is written ${ATTEMPT_RECORDS_PER_WRITE} records a statement`, async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [40] });
    const writes = new AttemptWrites();
    const log = new AttemptLog({ ...ctx.database, db: ctx.database.db.withPlugin(writes) }, undefined);
    for (let slot = 0; slot < 40; slot++) log.record(delivered(jobId, slot), false);
    await log.flush();
    expect(writes.rowsPerStatement).toEqual([1, ATTEMPT_RECORDS_PER_WRITE, ATTEMPT_RECORDS_PER_WRITE, 40 - 1 - 2 * ATTEMPT_RECORDS_PER_WRITE]);
    expect(await rowsOf(ctx.database, jobId)).toHaveLength(40);
  });

  it('finishAttempts: the rows finishAttempt writes, one statement; a record given twice is written as its last; none writes nothing; a record with an event is refused', async () => {
    const { jobId } = await seedJob(ctx.database, { quantities: [4] });
    const record = (slot: number, overrides: Partial<FinishAttemptOptions> = {}): FinishAttemptOptions => ({
      jobId, stageIndex: 0, slotIndex: slot, attempt: 1, outcome: 'delivered', errorClass: null, httpStatus: null, message: null, latencyMs: 12.6,
      usage: { promptTokens: 1, outputTokens: 2, totalTokens: 3 }, cost: { model: 'gemini-2.5-flash-image', usd: 0.039, possiblyBilledUsd: 0 }, ...overrides,
    });
    await finishAttempt(ctx.database, record(0));
    const one = await rowsOf(ctx.database, jobId);
    const writes = new AttemptWrites();
    const counted = { ...ctx.database, db: ctx.database.db.withPlugin(writes) };
    await finishAttempts(counted, [record(1), record(2, { outcome: 'failed', errorClass: 'no_image', latencyMs: -3 }), record(2, { outcome: 'abandoned', errorClass: 'cancelled' }), record(3, { message: 'x'.repeat(3000) })]);
    await finishAttempts(counted, []);
    expect(writes.rowsPerStatement).toEqual([3]);
    const rows = await rowsOf(ctx.database, jobId);
    expect(rows[1]).toEqual({ ...one[0], slot_index: 1 });
    expect(rows[2]).toMatchObject({ outcome: 'abandoned', error_class: 'cancelled', latency_ms: 13 });
    expect(String(rows[3]!['message'])).toHaveLength(2000);
    const costs = (await sql<{ model: string; cost_usd: string }>`select model, cost_usd::text from attempts where job_id = ${jobId} and slot_index = 1`.execute(ctx.database.db)).rows;
    expect(costs).toEqual([{ model: 'gemini-2.5-flash-image', cost_usd: expect.stringMatching(/^0\.039/) }]);
    const withEvent = record(0, { outcome: 'failed', errorClass: 'overloaded', event: { type: 'attempt:failed', jobId, stage: 0, slot: 0, attempt: 1, errorClass: 'overloaded', httpStatus: 503, message: 'm', willRetry: true, delayMs: 1 } });
    await expect(finishAttempts(ctx.database, [withEvent])).rejects.toThrow(TypeError);
  });
});
