/// <reference lib="dom" />
/**
 * The live job page in a real browser: Debian's Chromium driven by puppeteer-core (no
 * browser download), against `imagegen serve` (the CLI in a child process, embedded
 * database, jobs run in the service) and `imagegen run --open`. The fake Gemini server's
 * calls are held and let go by the test, with two injected failures, so "while the job
 * runs" is a state the test makes: thumbnails must appear before the job ends, a reload
 * mid-job must show the same state, the bars must reach the quantities, cancel must end
 * the job. Screenshots go to test-artifacts/ (gitignored).
 *
 * Chromium: `CHROMIUM_PATH`, else /usr/bin/chromium (`apt-get install -y chromium`;
 * .ci/run installs it). Without it the suite is skipped with the reason printed, except in
 * CI (`CI=true`), where a missing browser fails the suite.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Gate } from '../support/gate.js';
import { logLines, waitFor, type CliProcess } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { httpCall, inputPng, TOKENS } from '../support/http-service.js';
import { REPO_ROOT } from '../support/cli-entry.js';

const CHROMIUM = process.env['CHROMIUM_PATH'] ?? '/usr/bin/chromium';
const haveChromium = existsSync(CHROMIUM);
const ARTIFACTS = join(REPO_ROOT, 'test-artifacts');
if (!haveChromium) {
  if (process.env['CI'] === 'true') throw new Error(`the live page's browser test needs Chromium at ${CHROMIUM} in CI (apt-get install -y chromium; .ci/run does)`);
  console.warn(`live page browser test skipped: no Chromium at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
}

const TOKEN_ENV = {
  IMAGEGEN_API_TOKENS: `${TOKENS.alice}=alice`,
  IMAGEGEN_ADMIN_TOKENS: TOKENS.admin,
  IMAGEGEN_LOG_LEVEL: 'info',
  // Quick replacements: the injected failures retry at once.
  IMAGEGEN_BACKOFF_BASE_MS: '10',
  IMAGEGEN_BACKOFF_MAX_MS: '50',
};

/** What the page shows, read from the DOM: what a person sees, and what a reload must show again. */
interface Shown {
  readonly status: string;
  readonly bars: Record<string, string>;
  /** `stage:slot` of each thumbnail, in page order. */
  readonly thumbnails: string[];
  readonly failed: string;
  readonly byClass: Record<string, string>;
}

async function shown(page: Page): Promise<Shown> {
  return page.evaluate(() => {
    const bars: Record<string, string> = {};
    for (const bar of Array.from(document.querySelectorAll('progress'))) bars[bar.id] = `${bar.value}/${bar.max}`;
    const thumbnails = Array.from(document.querySelectorAll('section.stage')).flatMap((section) =>
      Array.from(section.querySelectorAll('.thumbs li')).map((li) => `${(section as HTMLElement).dataset['stage']}:${(li as HTMLElement).dataset['slot']}`),
    );
    const byClass: Record<string, string> = {};
    for (const li of Array.from(document.querySelectorAll('#by-class li'))) byClass[(li as HTMLElement).dataset['class'] as string] = li.querySelector('.n')?.textContent ?? '';
    return { status: document.getElementById('status')?.textContent ?? '', bars, thumbnails, failed: document.getElementById('failed')?.textContent ?? '', byClass };
  });
}

/** Waits until the page shows `text` in element `id` (the page's own live updates; no reload). */
async function until(page: Page, id: string, text: string): Promise<void> {
  await page.waitForFunction((i: string, t: string) => document.getElementById(i)?.textContent === t, { timeout: 60_000 }, id, text);
}

async function serving(proc: CliProcess): Promise<string> {
  await waitFor('the service to listen', () => logLines(proc.stderr(), 'serving').length > 0 || proc.child.exitCode !== null, 60_000);
  const line = logLines(proc.stderr(), 'serving')[0];
  if (!line) throw new Error(`serve exited: ${proc.stderr().slice(-2000)}`);
  return String(line['url']);
}

const spec = async (jobId: string, stages: readonly [string, number][]) => {
  const inputImageData = (await inputPng()).toString('base64');
  return { jobId, stages: stages.map(([prompt, quantity]) => ({ prompt, quantity, 'aspect-ratio': '1:1', inputImageData })) };
};

describe.skipIf(!haveChromium)('the live job page in Chromium', () => {
  let suite: CliSuite;
  let gate: Gate;
  let browser: Browser;
  let serve: CliProcess | undefined;

  beforeAll(async () => {
    gate = new Gate();
    mkdirSync(ARTIFACTS, { recursive: true });
    suite = await openCliSuite({
      built: false,
      // Calls 2 and 3 fail: a server error and a rate limit, each replaced by a later call. A
      // prompt that says "forbidden" is a policy block.
      server: {
        hold: (call) => gate.hold(call),
        behavior: ({ n, body }) =>
          JSON.stringify(body).includes('forbidden') ? 'finish:PROHIBITED_CONTENT' : n === 2 ? 'status:500' : n === 3 ? { status: 429, retryDelay: '0.05s', retryAfter: null } : 'image',
      },
      env: TOKEN_ENV,
    });
    browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  }, 120_000);
  afterAll(async () => {
    gate?.open();
    await browser?.close();
    if (serve && serve.child.exitCode === null) {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
    await suite?.close();
  });

  it('signs in, follows a job live (thumbnails in stage order before the end, failures by class), shows the same state after a reload mid-job, reaches the quantities; cancel ends another job', { timeout: 240_000 }, async () => {
    serve = await suite.start(['serve', '--port', '0']);
    const url = await serving(serve);
    expect((await httpCall(url, TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 50 })).status).toBe(200);
    expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await spec('pb-1', [['stage a', 3], ['stage b', 2]]))).status).toBe(201);

    const page = await browser.newPage();
    const problems: string[] = [];
    // A phone's width: the page must fit it.
    await page.setViewport({ width: 390, height: 844 });

    // No session yet: the sign-in form, then the job's page.
    await page.goto(`${url}/jobs/pb-1`);
    expect(await page.$eval('h1', (h) => h.textContent)).toBe('Sign in');
    await page.type('#token', TOKENS.alice);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    expect(new URL(page.url()).pathname).toBe('/jobs/pb-1');
    // From here on (the sign-in page itself answers 401), no script error and no failed request.
    page.on('pageerror', (error) => problems.push(`page error: ${String(error)}`));
    page.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console: ${message.text()}`);
    });
    const before = await shown(page);
    expect(before).toMatchObject({ status: expect.stringMatching(/^(queued|running)$/), thumbnails: [], failed: '0' });
    expect(before.bars).toEqual({ 'progress-total': '0/5', 'progress-0': '0/3', 'progress-1': '0/2' });
    // Every bar is labelled, and the page fits the phone's width.
    expect(await page.$$eval('progress', (all) => all.every((p) => (p as HTMLProgressElement).labels.length > 0 || p.hasAttribute('aria-label')))).toBe(true);
    expect(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).toBe(true);

    // Calls 1-3: one image and the two failures. The page shows them while the job runs.
    await suite.server.received(3);
    for (const n of [1, 2, 3]) gate.release(n);
    await until(page, 'count-total', '1/5');
    await until(page, 'failed', '2');
    const early = await shown(page);
    expect(early.thumbnails).toHaveLength(1);
    expect(early.status).toBe('running');
    // The 500 and the 429, classified as the summary classifies them.
    expect(early.byClass).toEqual({ overloaded: '1', rate_limited: '1' });

    // Two more images (calls 4 and 5), then a reload in the middle of the job shows the same state.
    await suite.server.received(5);
    for (const n of [4, 5]) gate.release(n);
    await until(page, 'count-total', '3/5');
    const mid = await shown(page);
    expect(mid.status).toBe('running');
    expect(mid.thumbnails).toHaveLength(3);
    // Stage order, then slot order.
    expect(mid.thumbnails).toEqual([...mid.thumbnails].sort((a, b) => Number(a.split(':')[0]) - Number(b.split(':')[0]) || Number(a.split(':')[1]) - Number(b.split(':')[1])));
    await page.screenshot({ path: join(ARTIFACTS, 'job-page-mid.png'), fullPage: true });
    await page.reload();
    expect(await shown(page)).toEqual(mid);
    // The thumbnails are the delivered images (WebP, loaded by the browser with the session).
    expect(await page.$$eval('.thumbs img', (imgs) => imgs.every((img) => (img as HTMLImageElement).complete && (img as HTMLImageElement).naturalWidth > 0))).toBe(true);

    // The rest of the calls: the bars reach the quantities, live.
    gate.open();
    await until(page, 'status', 'completed');
    const done = await shown(page);
    expect(done.bars).toEqual({ 'progress-total': '5/5', 'progress-0': '3/3', 'progress-1': '2/2' });
    expect(done.thumbnails).toEqual(['0:0', '0:1', '0:2', '1:0', '1:1']);
    expect(done.failed).toBe('2');
    expect(await page.$eval('#cancel', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
    await page.screenshot({ path: join(ARTIFACTS, 'job-page-completed.png'), fullPage: true });

    // The list of jobs on /, with the job's progress.
    await page.goto(`${url}/`);
    expect(await page.$eval('table.jobs tbody', (t) => t.textContent)).toContain('pb-1');

    // Cancel: a job whose calls are all held; the button ends it.
    gate = new Gate();
    expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await spec('pb-2', [['stage c', 6]]))).status).toBe(201);
    await page.goto(`${url}/jobs/pb-2`);
    expect((await shown(page)).bars['progress-total']).toBe('0/6');
    page.once('dialog', (dialog) => void dialog.accept());
    await page.click('#cancel');
    await until(page, 'status', 'cancelled');
    expect((await httpCall(url, TOKENS.alice, 'GET', '/v1/jobs/pb-2')).body).toMatchObject({ status: 'cancelled', deliveredImages: 0 });
    await page.screenshot({ path: join(ARTIFACTS, 'job-page-cancelled.png'), fullPage: true });
    gate.open();

    // A stage stopped by a policy block, followed live: its line says why, in the provider's words.
    gate = new Gate();
    expect((await httpCall(url, TOKENS.alice, 'POST', '/v1/jobs', await spec('pb-3', [['forbidden', 2]]))).status).toBe(201);
    await page.goto(`${url}/jobs/pb-3`);
    expect((await shown(page)).bars['progress-total']).toBe('0/2');
    gate.open();
    await until(page, 'status', 'failed');
    const detail = (await httpCall(url, TOKENS.alice, 'GET', '/v1/jobs/pb-3')).body.stages[0].shortfall.detail;
    expect(detail).toContain('PROHIBITED_CONTENT');
    await until(page, 'short-0', `short by 2: non_retryable (prompt_blocked) \u2014 ${detail}`);
    expect(problems).toEqual([]);
    serve.child.kill('SIGTERM');
    expect((await serve.exited).code).toBe(0);
  });

  it('imagegen run --open prints a link to the live page it serves while the job runs; the browser follows the job to the end', { timeout: 180_000 }, async () => {
    gate = new Gate();
    // The embedded database serves one process: the service of the test before must be gone.
    if (serve && serve.child.exitCode === null) {
      serve.child.kill('SIGTERM');
      await serve.exited;
    }
    expect((await suite.run(['credits', 'grant', 'alice', '10'])).code).toBe(0);
    await writeFile(join(suite.ws.root, 'open-input.png'), await inputPng());
    const file = await suite.ws.writeJob('open.json', { jobId: 'pb-open', userId: 'alice', stages: [{ prompt: 'open me', quantity: 2, 'aspect-ratio': '1:1', inputImage: 'open-input.png' }] });
    const run = await suite.start(['run', file, '--open', '--json']);
    await waitFor('the live page link', () => /live page: (\S+)/.test(run.stderr()) || run.child.exitCode !== null, 60_000);
    const link = /live page: (\S+)/.exec(run.stderr())?.[1];
    if (!link) throw new Error(`no link: ${run.stderr().slice(-2000)}`);
    expect(link).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/jobs\/pb-open\?link=link\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/);
    const page = await browser.newPage();
    await page.goto(link);
    // The link was traded for a session: the address bar holds the plain URL.
    expect(page.url()).toBe(link.split('?')[0]);
    expect((await shown(page)).bars['progress-total']).toBe('0/2');
    gate.open();
    await until(page, 'status', 'completed');
    expect((await shown(page)).thumbnails).toEqual(['0:0', '0:1']);
    const ended = await run.exited;
    expect(ended.code, ended.stderr.slice(-2000)).toBe(0);
    expect(JSON.parse(ended.stdout)).toMatchObject({ jobId: 'pb-open', status: 'completed', deliveredImages: 2 });
  });
});
