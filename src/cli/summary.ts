import type { JobSummary } from '../jobs/job-summary.js';

// The summary is a use case's answer (src/jobs), shared with the service; the CLI prints it.
export { jobSummary, type JobSummary } from '../jobs/job-summary.js';

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
