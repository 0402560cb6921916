import { JobNotFoundError } from '../db/errors.js';
import { jobStats } from '../db/ops/job-stats.js';
import { readJobResult } from '../db/ops/read-job-result.js';
/** Reads a job's summary from the database (the same for `run --json` and `status --json`). */
export async function jobSummary(database, jobId) {
    const stored = await readJobResult(database, jobId);
    if (!stored)
        throw new JobNotFoundError(jobId);
    const stats = await jobStats(database, { jobId });
    const ended = ['completed', 'partial', 'failed', 'cancelled'].includes(stored.rowStatus);
    const { result } = stored;
    return {
        jobId,
        status: ended ? result.status : stored.rowStatus,
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
        attempts: { total: stats.attempts, failed: stats.failed, byClass: stats.byClass },
        credits: stored.credits,
    };
}
/** A few human lines for a summary. */
export function formatSummary(summary) {
    const lines = [`job ${summary.jobId}: ${summary.status}, ${summary.deliveredImages}/${summary.totalImages} images`];
    for (const s of summary.stages) {
        const short = s.shortfall ? `, short ${s.shortfall.count} (${s.shortfall.reason}${s.shortfall.errorClass ? `: ${s.shortfall.errorClass}` : ''})` : '';
        lines.push(`  stage ${s.index}: ${s.delivered}/${s.quantity}${short}`);
    }
    const classes = Object.entries(summary.attempts.byClass)
        .map(([c, n]) => `${c} ${n}`)
        .join(', ');
    lines.push(`  attempts: ${summary.attempts.total} (${summary.attempts.failed} failed${classes ? `: ${classes}` : ''})`);
    lines.push(`  credits: reserved ${summary.credits.reserved}, captured ${summary.credits.captured}, released ${summary.credits.released}`);
    return lines.join('\n');
}
