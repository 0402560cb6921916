import { jobStats, listDeliveredSlots, type Database, type DeliveredSlot } from '../db/index.js';
import { readAtEventSeq } from './follow-job.js';
import { visibleJob, type Caller } from './caller.js';
import { jobSummary, type JobSummary } from './job-summary.js';

/** What the live page of a job shows when it loads, and the event number it reflects. */
export interface JobPageState {
  /** The number of the last logged event this state reflects: the page follows the events after it. */
  readonly seq: number;
  readonly summary: JobSummary;
  /** The prompt of each stage, stage order. */
  readonly prompts: readonly string[];
  /** Filled slots, stage order then slot order: the thumbnails. */
  readonly slots: readonly DeliveredSlot[];
  /** Replacement attempts started so far, and how many of them delivered. */
  readonly retries: number;
  readonly retriesDelivered: number;
}

/**
 * The caller's job as its page shows it (`GET /jobs/:id`), with the number of the last
 * event it reflects (`readAtEventSeq`, as `followJob` reads its snapshot), so the page's
 * script follows exactly the events after it (`GET /v1/jobs/:id/events?after=<seq>`): a
 * reload in the middle of a job shows the state of that moment, then goes on live.
 *
 * @throws {JobNotFoundError} no such job, another user's, or not the job a link opened.
 */
export async function jobPageState(database: Database, caller: Caller, jobId: string): Promise<JobPageState> {
  const { spec } = await visibleJob(database, caller, jobId);
  const { seq, value } = await readAtEventSeq(database, jobId, () => Promise.all([jobSummary(database, jobId), listDeliveredSlots(database, jobId), jobStats(database, { jobId })]));
  const [summary, slots, stats] = value;
  return { seq, summary, prompts: spec.stages.map((s) => s.prompt), slots, retries: stats.retries, retriesDelivered: stats.retriesDelivered };
}
