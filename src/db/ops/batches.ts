import { sql, type Kysely, type Selectable } from 'kysely';
import type { Database } from '../database.js';
import { assertCount } from '../internal/assert.js';
import { jsonb } from '../internal/json.js';
import { assertSlotExists } from '../internal/stage-slot.js';
import { TERMINAL_BATCH_STATES, type BatchesTable, type BatchRowState, type DatabaseSchema } from '../schema.js';

/** One attempt of a batch round: the slot and its attempt number (1-based, counting across restarts). */
export interface StoredBatchRequest {
  readonly slot: number;
  readonly attempt: number;
}

/** `submitting` until the provider's create answered; then the state the provider last reported. */
export type StoredBatchState = BatchRowState;

/** A batch round as stored: one provider batch of one stage. */
export interface StoredBatch {
  readonly jobId: string;
  readonly stageIndex: number;
  /** 1-based. */
  readonly round: number;
  /** Our key for the batch at the provider: how a batch whose create answer was lost is found again. */
  readonly displayName: string;
  /** The provider's batch name; null until the create answered. */
  readonly name: string | null;
  readonly state: StoredBatchState;
  readonly error: string | null;
  readonly requests: readonly StoredBatchRequest[];
  readonly createdAt: Date;
  /** When the state became terminal; null before. */
  readonly endedAt: Date | null;
}

/** What identifies a batch round. */
export interface BatchRoundKey {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly round: number;
}

/** A round to record before the provider's create call. */
export interface NewBatchRound extends BatchRoundKey {
  readonly displayName: string;
  /** The round's attempts, in the order sent; at least one, each slot once. */
  readonly requests: readonly StoredBatchRequest[];
}

/** A batch round with what its attempts came to (`listBatches`). */
export interface BatchSummary extends StoredBatch {
  /** Its attempts that ended `delivered`. */
  readonly delivered: number;
  /** Its attempts that ended `failed`. */
  readonly failed: number;
}

type BatchRow = Selectable<BatchesTable>;

/**
 * Records a batch round BEFORE the provider's create call, in ONE transaction: every
 * request's attempt is started exactly as `startAttempt` starts one (`slots.attempts_used =
 * greatest(old, attempt)`, the attempt row `started` on conflict do nothing, the stage
 * `pending` -> `running`) and the batch row is inserted (`name` null, `state`
 * `submitting`). A worker that dies after this leaves the round to the run that takes the
 * job over (`openBatches`): it polls the same batch, found by `displayName` if the
 * create's answer never arrived, and sends no second one for the same slots.
 *
 * Idempotent: the primary key `(job_id, stage_index, round)` is the key. The same round
 * again returns the stored row and writes nothing (the stored `displayName` wins: it is
 * the one the provider may already know). The insert comes first, `on conflict do
 * nothing`: a concurrent second call waits on the first one's row and then finds it.
 *
 * Locking: the batch row's insert takes the job and stage rows `for key share` (its
 * foreign keys), then the slot rows (upsert), the new attempt rows and the stage row (its
 * status): the rows `startAttempt` locks. It never waits on the job row lock while
 * holding attempt rows, so it cannot deadlock with `beginRun` (job row, then attempts).
 *
 * @throws {JobNotFoundError} no such job.
 * @throws {JobStateError} the job has no such stage, or a slot is not one the stage owes (nothing is written).
 * @throws {Error} the round is already stored with other requests (nothing is written).
 * @throws {RangeError|TypeError} a malformed round: no requests, a slot twice, a bad number, an empty display name.
 */
export async function recordBatchRound(database: Database, round: NewBatchRound): Promise<StoredBatch> {
  const { jobId, stageIndex, displayName, requests } = round;
  assertCount('round', round.round, 1);
  if (displayName.length === 0) throw new TypeError('a batch round needs a display name');
  if (requests.length === 0) throw new TypeError(`batch round ${jobId}/${stageIndex}#${round.round} has no requests`);
  const slots = new Set<number>();
  for (const request of requests) {
    assertCount('slot', request.slot, 0);
    assertCount('attempt', request.attempt, 1);
    // Each slot once: the slot upsert below could not update one row twice in a statement.
    if (slots.has(request.slot)) throw new TypeError(`batch round ${jobId}/${stageIndex}#${round.round} has slot ${request.slot} twice`);
    slots.add(request.slot);
  }
  // Stored as plain {slot, attempt}: whatever else the caller's objects carry stays out.
  const stored = requests.map((r) => ({ slot: r.slot, attempt: r.attempt }));

  return database.db.transaction().execute(async (trx) => {
    // The slots first, so a refused round writes nothing and says why as startAttempt does.
    const stage = await trx.selectFrom('stages').select('quantity').where('job_id', '=', jobId).where('stage_index', '=', stageIndex).executeTakeFirst();
    const unowed = stage ? stored.find((r) => r.slot >= stage.quantity) : stored[0];
    if (unowed !== undefined) {
      await assertSlotExists(trx, jobId, stageIndex, unowed.slot);
      throw new Error(`recordBatchRound: slot ${jobId}/${stageIndex}/${unowed.slot} was not recorded`);
    }

    const inserted = await trx
      .insertInto('batches')
      .values({ job_id: jobId, stage_index: stageIndex, round: round.round, display_name: displayName, requests: jsonb(stored) })
      .onConflict((oc) => oc.columns(['job_id', 'stage_index', 'round']).doNothing())
      .returningAll()
      .executeTakeFirst();
    if (inserted === undefined) {
      const existing = await selectBatch(trx, round);
      if (!existing) throw new Error(`recordBatchRound: batch round ${jobId}/${stageIndex}#${round.round} was neither inserted nor found`);
      if (!sameRequests(existing.requests, stored)) {
        throw new Error(
          `recordBatchRound: batch round ${jobId}/${stageIndex}#${round.round} is already stored with other requests ` +
            `(${describeRequests(existing.requests)}, not ${describeRequests(stored)})`,
        );
      }
      return toStoredBatch(existing);
    }

    // The attempts, as startAttempt starts each one, in one statement for the whole round.
    await sql`
      with request as (
        select (e->>'slot')::int as slot_index, (e->>'attempt')::int as attempt
        from jsonb_array_elements(${jsonb(stored)}) as e
      ), slot as (
        insert into slots (job_id, stage_index, slot_index, attempts_used)
        select ${jobId}, ${stageIndex}::int, slot_index, attempt from request
        on conflict (job_id, stage_index, slot_index) do update set attempts_used = greatest(slots.attempts_used, excluded.attempts_used)
        returning 1
      ), started as (
        insert into attempts (job_id, stage_index, slot_index, attempt, outcome)
        select ${jobId}, ${stageIndex}::int, slot_index, attempt, 'started' from request
        on conflict (job_id, stage_index, slot_index, attempt) do nothing
        returning 1
      ), stage as (
        update stages set status = 'running'
        where job_id = ${jobId} and stage_index = ${stageIndex} and status = 'pending'
        returning 1
      )
      select (select count(*) from slot)::int as slots`.execute(trx);
    return toStoredBatch(inserted);
  });
}

/**
 * Stores the provider's batch name once its create answered; a `submitting` batch becomes
 * `pending` (a later state already reported stays). One statement on the batch row.
 *
 * @throws {Error} no such batch round, or it already has another name (two provider
 *   batches for one round: the second must not be polled as if it were the first).
 */
export async function setBatchName(database: Database, key: BatchRoundKey, name: string): Promise<void> {
  if (name.length === 0) throw new TypeError('a batch name cannot be empty');
  const updated = await database.db
    .updateTable('batches')
    .set({ name, state: sql<BatchRowState>`case when state = 'submitting' then 'pending' else state end` })
    .where('job_id', '=', key.jobId)
    .where('stage_index', '=', key.stageIndex)
    .where('round', '=', key.round)
    .where((eb) => eb.or([eb('name', 'is', null), eb('name', '=', name)]))
    .executeTakeFirst();
  if (updated.numUpdatedRows > 0n) return;
  const existing = await selectBatch(database.db, key);
  if (!existing) throw new Error(`setBatchName: no batch round ${describeKey(key)}`);
  throw new Error(`setBatchName: batch round ${describeKey(key)} is already ${existing.name ?? '(no name)'}, not ${name}`);
}

/**
 * Stores the state the provider last reported. A terminal state (`succeeded`, `failed`,
 * `cancelled`, `expired`) sets `ended_at` (kept if already set) and is final: a late
 * report of an earlier state (a slower poller) changes nothing. `error` is stored when
 * given (null clears it), kept when omitted. One statement on the batch row.
 *
 * @throws {Error} no such batch round.
 */
export async function recordBatchState(database: Database, key: BatchRoundKey, state: StoredBatchState, error?: string | null): Promise<void> {
  const terminal = TERMINAL_BATCH_STATES.includes(state);
  const updated = await database.db
    .updateTable('batches')
    .set({
      state,
      ended_at: terminal ? sql<Date>`coalesce(ended_at, now())` : null,
      ...(error === undefined ? {} : { error }),
    })
    .where('job_id', '=', key.jobId)
    .where('stage_index', '=', key.stageIndex)
    .where('round', '=', key.round)
    .where((eb) => eb.or([eb('state', 'not in', TERMINAL_BATCH_STATES), eb('state', '=', state)]))
    .executeTakeFirst();
  if (updated.numUpdatedRows > 0n) return;
  if (!(await selectBatch(database.db, key))) throw new Error(`recordBatchState: no batch round ${describeKey(key)}`);
}

/**
 * The job's open batch rounds, for a run that resumes or takes the job over: those with
 * at least one attempt still `started` (`abandonStartedAttempts` leaves them so), with
 * `requests` narrowed to those attempts in the order sent. Ordered by stage, then round.
 * A plain read: only the job's lease holder acts on it.
 */
export async function openBatches(database: Database, jobId: string): Promise<StoredBatch[]> {
  const result = await sql<BatchRow & { open_requests: StoredBatchRequest[] }>`
    select b.job_id, b.stage_index, b.round, b.display_name, b.name, b.state, b.error, b.created_at, b.ended_at, b.requests, o.open_requests
    from batches b
    cross join lateral (
      select jsonb_agg(r.e order by r.ord) as open_requests
      from jsonb_array_elements(b.requests) with ordinality as r(e, ord)
      join attempts a on a.job_id = b.job_id and a.stage_index = b.stage_index
        and a.slot_index = (r.e->>'slot')::int and a.attempt = (r.e->>'attempt')::int
      where a.outcome = 'started'
    ) o
    where b.job_id = ${jobId} and o.open_requests is not null
    order by b.stage_index, b.round`.execute(database.db);
  return result.rows.map((row) => toStoredBatch({ ...row, requests: row.open_requests }));
}

/**
 * Every batch round of the job with what its attempts came to (`delivered`, `failed`), for
 * the job's summary. Ordered by stage, then round. A plain read.
 */
export async function listBatches(database: Database, jobId: string): Promise<BatchSummary[]> {
  const result = await sql<BatchRow & { delivered: number; failed: number }>`
    select b.job_id, b.stage_index, b.round, b.display_name, b.name, b.state, b.error, b.created_at, b.ended_at, b.requests, c.delivered, c.failed
    from batches b
    cross join lateral (
      select
        count(*) filter (where a.outcome = 'delivered')::int as delivered,
        count(*) filter (where a.outcome = 'failed')::int as failed
      from jsonb_array_elements(b.requests) as r(e)
      join attempts a on a.job_id = b.job_id and a.stage_index = b.stage_index
        and a.slot_index = (r.e->>'slot')::int and a.attempt = (r.e->>'attempt')::int
    ) c
    where b.job_id = ${jobId}
    order by b.stage_index, b.round`.execute(database.db);
  return result.rows.map((row) => ({ ...toStoredBatch(row), delivered: row.delivered, failed: row.failed }));
}

function selectBatch(db: Kysely<DatabaseSchema>, key: BatchRoundKey): Promise<BatchRow | undefined> {
  return db
    .selectFrom('batches')
    .selectAll()
    .where('job_id', '=', key.jobId)
    .where('stage_index', '=', key.stageIndex)
    .where('round', '=', key.round)
    .executeTakeFirst();
}

function toStoredBatch(row: BatchRow): StoredBatch {
  return {
    jobId: row.job_id,
    stageIndex: row.stage_index,
    round: row.round,
    displayName: row.display_name,
    name: row.name,
    state: row.state,
    error: row.error,
    requests: row.requests.map((r) => ({ slot: r.slot, attempt: r.attempt })),
    createdAt: row.created_at,
    endedAt: row.ended_at,
  };
}

/** Same attempts in the same order: the order is the one the provider was (or will be) sent. */
function sameRequests(a: readonly StoredBatchRequest[], b: readonly StoredBatchRequest[]): boolean {
  return a.length === b.length && a.every((r, i) => r.slot === b[i]?.slot && r.attempt === b[i]?.attempt);
}

function describeRequests(requests: readonly StoredBatchRequest[]): string {
  return requests.map((r) => `${r.slot}#${r.attempt}`).join(', ');
}

function describeKey(key: BatchRoundKey): string {
  return `${key.jobId}/${key.stageIndex}#${key.round}`;
}
