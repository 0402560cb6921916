import type { Database } from '../database.js';
import type { JobRowStatus, StageRowStatus } from '../schema.js';

/** A job's state at one instant: its counters, stages and committed deliveries. */
export interface StoredJobSnapshot {
  readonly jobId: string;
  readonly status: JobRowStatus;
  readonly total: number;
  readonly delivered: number;
  /** Every committed delivery so far, in delivery order. */
  readonly attachIds: readonly string[];
  readonly cancelRequested: boolean;
  readonly stages: readonly {
    readonly index: number;
    readonly quantity: number;
    readonly delivered: number;
    readonly status: StageRowStatus;
  }[];
}

/**
 * Reads the job, its stages and its committed deliveries (delivery order), or null
 * when the job does not exist.
 *
 * One `repeatable read` transaction: the job counters, the stages and the id list
 * are one consistent picture, not three reads with deliveries committing in between.
 * No lock: a read-only snapshot never waits for, or holds up, a delivery.
 */
export async function readJobSnapshot(database: Database, jobId: string): Promise<StoredJobSnapshot | null> {
  return database.db
    .transaction()
    .setIsolationLevel('repeatable read')
    .execute(async (trx) => {
      const job = await trx
        .selectFrom('jobs')
        .select(['status', 'total', 'delivered', 'cancel_requested'])
        .where('id', '=', jobId)
        .executeTakeFirst();
      if (!job) return null;
      const stages = await trx
        .selectFrom('stages')
        .select(['stage_index', 'quantity', 'delivered', 'status'])
        .where('job_id', '=', jobId)
        .orderBy('stage_index')
        .execute();
      const attachments = await trx.selectFrom('attachments').select('id').where('job_id', '=', jobId).orderBy('seq').execute();
      return {
        jobId,
        status: job.status,
        total: job.total,
        delivered: job.delivered,
        attachIds: attachments.map((a) => a.id),
        cancelRequested: job.cancel_requested,
        stages: stages.map((s) => ({ index: s.stage_index, quantity: s.quantity, delivered: s.delivered, status: s.status })),
      };
    });
}
