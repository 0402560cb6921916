import type { Database } from '../database.js';

/** The message of the latest failed attempt of one class in one stage. */
export interface LastFailureMessage {
  readonly stageIndex: number;
  readonly errorClass: string;
  readonly message: string;
}

/**
 * Per stage and error class, the message of the latest failed attempt of job `jobId`
 * (what the summary shows beside a shortfall: which quota, which policy, which status).
 * One read (`distinct on`, latest attempt first), no lock: the attempt log only grows.
 */
export async function lastFailureMessages(database: Database, jobId: string): Promise<LastFailureMessage[]> {
  const rows = await database.db
    .selectFrom('attempts')
    .distinctOn(['stage_index', 'error_class'])
    .select(['stage_index', 'error_class', 'message'])
    .where('job_id', '=', jobId)
    .where('outcome', '=', 'failed')
    .where('error_class', 'is not', null)
    .where('message', 'is not', null)
    .orderBy('stage_index')
    .orderBy('error_class')
    .orderBy('finished_at', 'desc')
    .orderBy('attempt', 'desc')
    .orderBy('slot_index', 'desc')
    .execute();
  return rows.map((row) => ({ stageIndex: row.stage_index, errorClass: row.error_class as string, message: row.message as string }));
}
