import { JobNotFoundError, jobStats, readJobResult, type Database } from '../db/index.js';
import type { JobStatus } from '../domain/result.js';

/** The `--json` summary of a job: the CLI's contract. */
export interface JobSummary {
  readonly jobId: string;
  /** The job's status; `queued`/`running` for a job that has not ended. */
  readonly status: JobStatus | 'queued' | 'running';
  readonly totalImages: number;
  readonly deliveredImages: number;
  /** Stage order, then slot order. */
  readonly attachIds: readonly string[];
  readonly stages: readonly {
    readonly index: number;
    readonly quantity: number;
    readonly delivered: number;
    readonly attachIds: readonly string[];
    readonly shortfall: null | { readonly count: number; readonly reason: string; readonly errorClass: string | null };
  }[];
  /** `abandoned`: attempts cut off by a run that died or shut down (no budget charged, not failures). */
  readonly attempts: { readonly total: number; readonly failed: number; readonly abandoned: number; readonly byClass: Readonly<Record<string, number>> };
  readonly credits: { readonly reserved: number; readonly captured: number; readonly released: number };
}

/** Reads a job's summary from the database (the same for `run --json` and `status --json`). */
export async function jobSummary(database: Database, jobId: string): Promise<JobSummary> {
  const stored = await readJobResult(database, jobId);
  if (!stored) throw new JobNotFoundError(jobId);
  const stats = await jobStats(database, { jobId });
  const ended = ['completed', 'partial', 'failed', 'cancelled'].includes(stored.rowStatus);
  const { result } = stored;
  return {
    jobId,
    status: ended ? result.status : (stored.rowStatus as 'queued' | 'running'),
    totalImages: result.totalImages,
    deliveredImages: result.deliveredImages,
    attachIds: result.attachIds,
    stages: result.stages.map((s) => ({
      index: s.index,
      quantity: s.quantity,
      delivered: s.delivered,
      attachIds: s.attachIds,
      shortfall: s.shortfall === null ? null : { count: s.shortfall.count, reason: ended ? s.shortfall.reason : 'pending', errorClass: s.shortfall.errorClass },
    })),
    attempts: { total: stats.attempts, failed: stats.failed, abandoned: stats.abandoned, byClass: stats.byClass },
    credits: stored.credits,
  };
}

/** A few human lines for a summary. */
export function formatSummary(summary: JobSummary): string {
  const lines = [`job ${summary.jobId}: ${summary.status}, ${summary.deliveredImages}/${summary.totalImages} images`];
  for (const s of summary.stages) {
    const short = s.shortfall ? `, short ${s.shortfall.count} (${s.shortfall.reason}${s.shortfall.errorClass ? `: ${s.shortfall.errorClass}` : ''})` : '';
    lines.push(`  stage ${s.index}: ${s.delivered}/${s.quantity}${short}`);
  }
  if (summary.stages.some((s) => s.shortfall?.errorClass === 'quota_exhausted')) {
    // Say it plainly: the fix is waiting for (or buying) quota, not running the job again now.
    lines.push(
      '  provider quota exhausted: the provider asked to wait longer than IMAGEGEN_MAX_RETRY_AFTER_MS, so no new attempts were made (each failed attempt says how long it asked for)',
    );
  }
  const classes = Object.entries(summary.attempts.byClass)
    .map(([c, n]) => `${c} ${n}`)
    .join(', ');
  const abandoned = summary.attempts.abandoned > 0 ? `, ${summary.attempts.abandoned} abandoned by runs that died` : '';
  lines.push(`  attempts: ${summary.attempts.total} (${summary.attempts.failed} failed${classes ? `: ${classes}` : ''}${abandoned})`);
  lines.push(`  credits: reserved ${summary.credits.reserved}, captured ${summary.credits.captured}, released ${summary.credits.released}`);
  return lines.join('\n');
}
