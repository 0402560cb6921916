/**
 * The live page's HTML, rendered on the server: a page is complete and readable before
 * its script runs (and with none), and a reload shows the state of that moment. The
 * script (`assets/page.js`) then follows the job's events and changes the numbers,
 * bars and thumbnails in place. Every value from the database or the request is
 * escaped (`escapeHtml`); no inline script or style, so the Content-Security-Policy
 * allows only the page's own files.
 */
import type { DeliveredSlot, UserJobRow } from '../../db/index.js';
import type { JobPageState } from '../../jobs/job-page.js';
import type { JobSummary } from '../../jobs/job-summary.js';

const ENTITIES: Readonly<Record<string, string>> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Text safe in HTML content and in a quoted attribute. */
export function escapeHtml(value: string | number): string {
  return String(value).replace(/[&<>"']/g, (c) => ENTITIES[c] as string);
}

const FINAL = new Set(['completed', 'partial', 'failed', 'cancelled']);

/** The security headers every page answer carries. */
export const PAGE_HEADERS = Object.freeze({
  'content-type': 'text/html; charset=utf-8',
  'cache-control': 'no-store',
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
});

function layout(title: string, body: string, options: { readonly script?: boolean } = {}): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · imagegen</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/page.css">
${options.script ? '<script src="/assets/page.js" defer></script>\n' : ''}</head>
<body>
${body}
</body>
</html>
`;
}

function nav(signedIn: boolean): string {
  const out = signedIn ? '<form method="post" action="/logout" class="inline"><button type="submit" class="link">Sign out</button></form>' : '';
  return `<header class="top"><a href="/" class="home">imagegen</a>${out}</header>`;
}

/** `12/50` and a `<progress>` that says the same to a screen reader. */
function progressBar(id: string, label: string, delivered: number, total: number): string {
  return `<div class="bar"><label for="progress-${id}">${escapeHtml(label)}</label>
<progress id="progress-${id}" max="${total}" value="${delivered}">${delivered}/${total}</progress>
<span class="count" id="count-${id}">${delivered}/${total}</span></div>`;
}

function byClassText(byClass: Readonly<Record<string, number>>): string {
  const parts = Object.entries(byClass)
    .filter(([, n]) => n > 0)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([c, n]) => `<li data-class="${escapeHtml(c)}">${escapeHtml(c)} <span class="n">${n}</span></li>`);
  return parts.join('');
}

/**
 * How a stage that ended short says why: `reason`, the error class when there was one, and
 * the provider's words when known (`detail`: which quota ran out, which finish reason
 * blocked the output). `page.js` writes the same text when the stage ends live.
 */
export function shortfallText(shortfall: NonNullable<JobSummary['stages'][number]['shortfall']> | null): string {
  if (shortfall === null || shortfall.reason === 'pending') return '';
  return `short by ${shortfall.count}: ${shortfall.reason}${shortfall.errorClass ? ` (${shortfall.errorClass})` : ''}${shortfall.detail ? ` — ${shortfall.detail}` : ''}`;
}

function thumbnail(jobId: string, slot: Pick<DeliveredSlot, 'stage' | 'slot'>): string {
  const src = `/v1/jobs/${encodeURIComponent(jobId)}/images/${slot.stage}/${slot.slot}`;
  return `<li data-slot="${slot.slot}"><a href="${escapeHtml(src)}"><img src="${escapeHtml(src)}" alt="stage ${slot.stage + 1}, image ${slot.slot + 1}" width="96" height="96" loading="lazy"></a></li>`;
}

/** `GET /jobs/:id`: the job as a person follows it. */
export function renderJobPage(state: JobPageState): string {
  const { summary, seq } = state;
  const jobId = summary.jobId;
  const final = FINAL.has(summary.status);
  const stages = summary.stages
    .map((stage) => {
      const thumbs = state.slots.filter((s) => s.stage === stage.index).map((s) => thumbnail(jobId, s));
      const prompt = state.prompts[stage.index] ?? '';
      return `<section class="stage" id="stage-${stage.index}" data-stage="${stage.index}" data-quantity="${stage.quantity}" aria-labelledby="stage-title-${stage.index}">
<h2 id="stage-title-${stage.index}">Stage ${stage.index + 1}</h2>
<p class="prompt">${escapeHtml(prompt)}</p>
${progressBar(String(stage.index), `Stage ${stage.index + 1} images`, stage.delivered, stage.quantity)}
<p class="shortfall" id="short-${stage.index}" role="status">${escapeHtml(shortfallText(stage.shortfall))}</p>
<ol class="thumbs" id="thumbs-${stage.index}" aria-label="Stage ${stage.index + 1} images">${thumbs.join('')}</ol>
</section>`;
    })
    .join('\n');
  const body = `${nav(true)}
<main id="job" data-job-id="${escapeHtml(jobId)}" data-seq="${seq}" data-status="${escapeHtml(summary.status)}">
<h1>Job <code>${escapeHtml(jobId)}</code></h1>
<section class="summary" aria-label="Job summary">
<p>Status: <strong id="status" role="status" aria-live="polite">${escapeHtml(summary.status)}</strong> <span id="live" class="live">${final ? '' : 'live'}</span></p>
${progressBar('total', 'All images', summary.deliveredImages, summary.totalImages)}
<div class="attempts">
<p>Failed attempts: <span id="failed">${summary.attempts.failed}</span> · retries: <span id="retries">${state.retries}</span> (<span id="retries-delivered">${state.retriesDelivered}</span> delivered)</p>
<ul id="by-class" class="by-class" aria-label="Failed attempts by class">${byClassText(summary.attempts.byClass)}</ul>
</div>
<p class="actions"><button id="cancel" type="button"${final ? ' disabled' : ''}>Cancel job</button> <span id="cancel-result" role="status"></span></p>
</section>
${stages}
</main>`;
  return layout(`Job ${jobId}`, body, { script: true });
}

function fmtDate(date: Date | null): string {
  return date === null ? '' : date.toISOString().replace('T', ' ').slice(0, 19);
}

/** `GET /`: the signed-in user's recent jobs. */
export function renderJobList(userId: string, jobs: readonly UserJobRow[]): string {
  const rows = jobs
    .map((job) => {
      const href = `/jobs/${encodeURIComponent(job.jobId)}`;
      return `<tr><td><a href="${escapeHtml(href)}"><code>${escapeHtml(job.jobId)}</code></a></td><td>${escapeHtml(job.status)}</td>
<td><progress max="${job.totalImages}" value="${job.deliveredImages}" aria-label="images of ${escapeHtml(job.jobId)}">${job.deliveredImages}/${job.totalImages}</progress> <span class="count">${job.deliveredImages}/${job.totalImages}</span></td><td>${escapeHtml(fmtDate(job.createdAt))}</td></tr>`;
    })
    .join('\n');
  const table =
    jobs.length === 0
      ? '<p>No jobs yet.</p>'
      : `<table class="jobs"><caption>Recent jobs</caption><thead><tr><th scope="col">Job</th><th scope="col">Status</th><th scope="col">Images</th><th scope="col">Created (UTC)</th></tr></thead>
<tbody>
${rows}
</tbody></table>`;
  return layout('Jobs', `${nav(true)}\n<main><h1>Jobs of <code>${escapeHtml(userId)}</code></h1>\n${table}\n</main>`);
}

/** The sign-in form: an API token (`IMAGEGEN_API_TOKENS`) for a browser session; `next` is where to go after. */
export function renderSignIn(next: string, message: string | null): string {
  const body = `${nav(false)}
<main class="narrow"><h1>Sign in</h1>
${message ? `<p class="error" role="alert">${escapeHtml(message)}</p>` : '<p>Open the link <code>imagegen run --open</code> or <code>imagegen submit --open</code> printed, or sign in with your API token.</p>'}
<form method="post" action="/session">
<input type="hidden" name="next" value="${escapeHtml(next)}">
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form></main>`;
  return layout('Sign in', body);
}

/** A page that says what went wrong (404, 403) in words, with a way back. */
export function renderMessage(title: string, message: string): string {
  return layout(title, `${nav(false)}\n<main class="narrow"><h1>${escapeHtml(title)}</h1><p role="alert">${escapeHtml(message)}</p><p><a href="/">All jobs</a></p></main>`);
}
