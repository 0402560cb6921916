import type { JobSummary } from '../jobs/job-summary.js';

// The summary is a use case's answer (src/jobs), shared with the service; the CLI prints it.
export { jobSummary, type JobSummary } from '../jobs/job-summary.js';

/** A few human lines for a summary. */
export function formatSummary(summary: JobSummary): string {
  const lines = [`job ${summary.jobId}: ${summary.status}, ${summary.deliveredImages}/${summary.totalImages} images`];
  for (const s of summary.stages) {
    const short = s.shortfall ? `, short ${s.shortfall.count} (${s.shortfall.reason}${s.shortfall.errorClass ? `: ${s.shortfall.errorClass}` : ''})` : '';
    lines.push(`  stage ${s.index}: ${s.delivered}/${s.quantity}${short}${s.mode === 'batch' ? `, batch mode: ${roundsText(s.rounds ?? [])}` : ''}`);
  }
  if (summary.stages.some((s) => s.shortfall?.errorClass === 'quota_exhausted')) {
    // Say it plainly: the fix is waiting for (or buying) quota, not running the job again now.
    lines.push(
      '  provider quota exhausted: the provider asked to wait longer than IMAGEGEN_MAX_RETRY_AFTER_MS, so no new attempts were made (each failed attempt says how long it asked for)',
    );
  }
  if (summary.stages.some((s) => s.shortfall?.reason === 'cost_cap')) {
    // The exact count is the promise below the cap only: say that the cap, not a failure, ended it.
    lines.push(`  spend cap reached: the next attempt would have passed maxCostUsd ${summary.cost.maxCostUsd ?? ''}, so no more were started (the job is partial by its cap)`);
  }
  const classes = Object.entries(summary.attempts.byClass)
    .map(([c, n]) => `${c} ${n}`)
    .join(', ');
  const abandoned = summary.attempts.abandoned > 0 ? `, ${summary.attempts.abandoned} abandoned by runs that died` : '';
  lines.push(`  attempts: ${summary.attempts.total} (${summary.attempts.failed} failed${classes ? `: ${classes}` : ''}${abandoned})`);
  lines.push(`  credits: reserved ${summary.credits.reserved}, captured ${summary.credits.captured}, released ${summary.credits.released}`);
  const { cost } = summary;
  const perImage = cost.perDeliveredImageUsd === null ? '' : `, ${formatUsd(cost.perDeliveredImageUsd)} per delivered image`;
  const possibly = cost.possiblyBilledCount > 0 ? `, ${cost.possiblyBilledCount} timed out: possibly billed ${formatUsd(cost.possiblyBilledUsd)} more` : '';
  const cap = cost.maxCostUsd === null ? '' : `, cap ${formatUsd(cost.maxCostUsd)}`;
  lines.push(`  estimated cost: ${formatUsd(cost.estimatedUsd)}${perImage}, wasted ${formatUsd(cost.wastedUsd)}${possibly}${cap}`);
  return lines.join('\n');
}

/** A batch stage's rounds for people: `2 rounds (batches/1 succeeded 50 sent 41 delivered; ...)`. */
function roundsText(rounds: NonNullable<JobSummary['stages'][number]['rounds']>): string {
  if (rounds.length === 0) return 'no batch sent';
  const each = rounds.map((r) => `${r.batch ?? '(not created)'} ${r.state}: ${r.requests} sent, ${r.delivered} delivered, ${r.failed} failed${r.error ? ` (${r.error})` : ''}`);
  return `${rounds.length} round${rounds.length === 1 ? '' : 's'} (${each.join('; ')})`;
}

/** Dollars for people: 4 decimals, or 2 significant digits below a cent (so $0.0000036 is not $0.0000). */
export function formatUsd(n: number): string {
  if (n === 0) return '$0';
  return Math.abs(n) < 0.01 ? `$${Number(n.toPrecision(2))}` : `$${n.toFixed(4)}`;
}
