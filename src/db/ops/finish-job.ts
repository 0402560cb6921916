import { sql } from 'kysely';
import type { JobResult } from '../../domain/result.js';
import type { Database } from '../database.js';
import { JobNotFoundError, JobStateError } from '../errors.js';
import { appendJobEvents } from '../internal/append-job-events.js';
import { jsonb } from '../internal/json.js';
import { encodeNotification, PROGRESS_CHANNEL, type JobFinishedNotification, type NotifiedEvent } from '../notifications.js';
import { FINAL_JOB_STATUSES } from '../schema.js';

export interface FinishJobOptions {
  /** A short reason stored in `jobs.error` (e.g. why a job failed). */
  readonly error?: string | null | undefined;
}

export interface FinishedCredits {
  /** The job's reservation at submit. */
  readonly reserved: number;
  /** Captured by deliveries. */
  readonly captured: number;
  /** Given back at the end: `reserved - captured`. */
  readonly released: number;
}

/**
 * Ends a job: stores its status, merged attach ids and per-stage shortfalls,
 * releases the unused reservation back to the user's balance (ledger `release`),
 * completes the progress list with any delivered id it misses, appends to the job's
 * event log each stage's end (`stage:completed` or `stage:short`, in stage order: a
 * stage's end is final only here, a stopped run's short stages are resumed) and then
 * `job:finished`, and publishes `job:finished` (status and counts) on
 * {@link PROGRESS_CHANNEL}, all in one transaction: the events are logged and the
 * notification is delivered only if this commits.
 *
 * Idempotent: a finished job is returned as is; the release happens once per
 * reservation round (the status check under the row lock, and a unique index on
 * release entries per job and round; see `reopenJob`).
 *
 * Locking: the job row `for update` first (the same lock `deliverSlot` takes
 * first, so no delivery can capture after the release, nor log an event after
 * `job:finished`), then the account row by the balance update.
 *
 * @throws {JobStateError} when `result` says `completed` but the database holds
 *   fewer deliveries than the job's total (the status must be honest).
 * @throws {TypeError} when a stage of `result` is short of its quantity with no
 *   shortfall (its `stage:short` would have no reason); nothing is written.
 */
export async function finishJob(
  database: Database,
  jobId: string,
  result: JobResult,
  options: FinishJobOptions = {},
): Promise<FinishedCredits> {
  if (result.jobId !== jobId) throw new TypeError(`result is for job ${result.jobId}, not ${jobId}`);
  const unexplained = result.stages.find((stage) => stage.shortfall === null && stage.delivered !== stage.quantity);
  if (unexplained) throw new TypeError(`stage ${unexplained.index} of job ${jobId} holds ${unexplained.delivered}/${unexplained.quantity} images and no shortfall says why`);
  return database.db.transaction().execute(async (trx) => {
    const job = await trx
      .selectFrom('jobs')
      .select(['user_id', 'status', 'total', 'delivered', 'credits_reserved', 'credits_captured', 'credits_released', 'reopened'])
      .where('id', '=', jobId)
      .forUpdate()
      .executeTakeFirst();
    if (!job) throw new JobNotFoundError(jobId);
    if (FINAL_JOB_STATUSES.includes(job.status)) {
      return { reserved: job.credits_reserved, captured: job.credits_captured, released: job.credits_released };
    }
    if (result.status === 'completed' && job.delivered !== job.total) {
      throw new JobStateError(jobId, `cannot be completed with ${job.delivered}/${job.total} images delivered`);
    }

    const release = job.credits_reserved - job.credits_captured - job.credits_released;
    await trx
      .updateTable('credit_accounts')
      .set((eb) => ({ reserved: eb('reserved', '-', release), balance: eb('balance', '+', release), updated_at: sql`now()` }))
      .where('user_id', '=', job.user_id)
      .execute();
    await trx.insertInto('credit_ledger').values({ user_id: job.user_id, kind: 'release', amount: release, job_id: jobId, round: job.reopened }).execute();

    // Each stage's end is logged with the status this transaction stores, and the counts
    // its row holds: the log says what the tables say.
    const events: NotifiedEvent[] = [];
    for (const stage of result.stages) {
      const { shortfall } = stage;
      const row = await trx
        .updateTable('stages')
        .set({
          status: shortfall === null ? 'completed' : 'short',
          shortfall_count: shortfall?.count ?? null,
          shortfall_reason: shortfall?.reason ?? null,
          shortfall_error_class: shortfall?.errorClass ?? null,
        })
        .where('job_id', '=', jobId)
        .where('stage_index', '=', stage.index)
        .returning(['quantity', 'delivered'])
        .executeTakeFirst();
      if (!row) continue;
      const counts = { jobId, stage: stage.index, quantity: row.quantity, delivered: row.delivered };
      events.push(shortfall === null ? { type: 'stage:completed', ...counts } : { type: 'stage:short', ...counts, reason: shortfall.reason, errorClass: shortfall.errorClass });
    }

    // Delivered ids the coalesced progress writer never flushed (a crash, or no
    // writer at all) are appended in delivery order, so the seed-compatible
    // progress list ends complete.
    await sql`
      with missing as (
        select coalesce(jsonb_agg(a.id order by a.seq), '[]'::jsonb) as ids
        from attachments a
        join jobs j on j.id = a.job_id
        where a.job_id = ${jobId} and not (j.progress_attach_ids ? a.id)
      )
      update jobs set
        progress_attach_ids = jobs.progress_attach_ids || missing.ids,
        progress_count = jsonb_array_length(jobs.progress_attach_ids) + jsonb_array_length(missing.ids),
        progress_updated_at = now()
      from missing
      where jobs.id = ${jobId}`.execute(trx);

    const updated = await trx
      .updateTable('jobs')
      .set((eb) => ({
        status: result.status,
        result_attach_ids: jsonb([...result.attachIds]),
        error: options.error ?? null,
        credits_released: eb('credits_released', '+', release),
        finished_at: sql`now()`,
        updated_at: sql`now()`,
      }))
      .where('id', '=', jobId)
      .returning(['credits_reserved', 'credits_captured', 'credits_released'])
      .executeTakeFirstOrThrow();

    const finished: JobFinishedNotification = { type: 'job:finished', jobId, status: result.status, result: { totalImages: job.total, deliveredImages: job.delivered } };
    await appendJobEvents(trx, jobId, [...events, finished]);
    await sql`select pg_notify(${PROGRESS_CHANNEL}, ${encodeNotification(finished)})`.execute(trx);

    return { reserved: updated.credits_reserved, captured: updated.credits_captured, released: updated.credits_released };
  });
}
