/**
 * The live page's server side over HTTP (the browser itself is test/e2e/page-browser.test.ts):
 * who may see which page (bearer token, a signed link traded for a cookie, the sign-in
 * form), what a link's session reaches, the header a cookie needs to change anything,
 * the page rendering the job's stored state (bars, counts, thumbnails in stage and slot
 * order, shortfall reasons), escaping, and `?after=` on the event stream. PGlite and
 * PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { jobPageLink, PAGE_SECRET_NAME, PageSessions } from '../../src/jobs/page-links.js';
import { serviceSecret } from '../../src/db/index.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { DATABASE_KINDS, postgresLegSkipped } from '../support/databases.js';
import { Gate } from '../support/gate.js';
import { inputPng, openEvents, startService, TOKENS, type TestService } from '../support/http-service.js';

/** The value of `imagegen_session` in a `Set-Cookie` answer. */
function sessionOf(headers: Headers): string {
  const cookie = headers.get('set-cookie') ?? '';
  const match = /^imagegen_session=([^;]*);/.exec(cookie);
  if (!match) throw new Error(`no session cookie in ${JSON.stringify(cookie)}`);
  return match[1] as string;
}

/** Every `<progress ... id="progress-<id>" max="M" value="V">` of a page, by id. */
function bars(html: string): Record<string, { max: number; value: number }> {
  const out: Record<string, { max: number; value: number }> = {};
  for (const m of html.matchAll(/<progress id="progress-([^"]+)" max="(\d+)" value="(\d+)">/g)) out[m[1] as string] = { max: Number(m[2]), value: Number(m[3]) };
  return out;
}

/** The thumbnails' image paths, in page order. */
function thumbnails(html: string): string[] {
  return [...html.matchAll(/<img src="([^"]+)"/g)].map((m) => m[1] as string);
}

for (const kind of DATABASE_KINDS) {
  const title = `the live page over HTTP [${kind}]`;
  if (postgresLegSkipped(kind, title)) continue;

  describe(title, () => {
    let gemini: FakeGeminiServer;
    let service: TestService;
    let inputId: string;
    let gate: Gate;

    /** Waits for a job's end: its event stream ends after job:finished, or after the snapshot of a job that had ended. */
    const untilEnded = async (token: string, jobId: string): Promise<void> => {
      const last = (await (await openEvents(service, token, jobId)).rest()).at(-1);
      expect(last?.event === 'job:finished' || ['completed', 'partial', 'failed', 'cancelled'].includes(last?.data.status)).toBe(true);
    };

    beforeAll(async () => {
      gate = new Gate();
      gate.open();
      // Calls 2 and 3 fail (a 500 and a 429): two failed attempts the page counts by class.
      // A prompt that says "forbidden" is a policy block (submitted last, after the others ran).
      gemini = await startFakeGeminiServer({
        hold: gate.hold,
        behavior: ({ n, body }) =>
          JSON.stringify(body).includes('forbidden') ? 'finish:PROHIBITED_CONTENT' : n === 2 ? 'status:500' : n === 3 ? { status: 429, retryDelay: '0.01s', retryAfter: null } : 'image',
      });
      service = await startService({ kind, generator: new GeminiImageGenerator({ apiKey: gemini.apiKey, baseUrl: gemini.url, timeoutMs: 30_000 }) });
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 500 })).status).toBe(200);
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/bob', { amount: 50 })).status).toBe(200);
      const upload = await service.call(TOKENS.alice, 'POST', '/v1/attachments', new Uint8Array(await inputPng()), { 'content-type': 'image/png' });
      inputId = upload.body.attachId;
      // Two stages, run to the end before the tests read them.
      const job = { jobId: 'page-1', stages: [{ quantity: 3, prompt: 'a <b>lighthouse</b> & "sea"', mergedImageAttachId: inputId }, { quantity: 2, prompt: 'a harbour', mergedImageAttachId: inputId }] };
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', job)).status).toBe(201);
      // page-1 runs alone to its end, so calls 2 and 3 (the two faults) are its own, not another job's.
      await untilEnded(TOKENS.alice, 'page-1');
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', { jobId: 'page-2', stages: [{ quantity: 1, prompt: 'x', mergedImageAttachId: inputId }] })).status).toBe(201);
      const bobInput = (await service.call(TOKENS.bob, 'POST', '/v1/attachments', new Uint8Array(await inputPng()), { 'content-type': 'image/png' })).body.attachId;
      expect((await service.call(TOKENS.bob, 'POST', '/v1/jobs', { jobId: 'page-bob', stages: [{ quantity: 1, prompt: 'y', mergedImageAttachId: bobInput }] })).status).toBe(201);
      for (const [token, id] of [[TOKENS.alice, 'page-2'], [TOKENS.bob, 'page-bob']] as const) await untilEnded(token, id);
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', { jobId: 'page-blocked', stages: [{ quantity: 2, prompt: 'forbidden', mergedImageAttachId: inputId }] })).status).toBe(201);
      await (await openEvents(service, TOKENS.alice, 'page-blocked')).rest();
    });
    afterAll(async () => {
      gate?.open();
      await service?.close();
      await gemini?.close();
    });

    const link = async (userId: string, jobId: string, ttlSeconds = 60) => (await jobPageLink(service.database, { baseUrl: service.url, userId, jobId, ttlSeconds })).url.slice(service.url.length);

    /** Opens a link and returns the session cookie it gave. */
    const openLink = async (path: string): Promise<string> => {
      const opened = await service.call(null, 'GET', path);
      expect(opened.status).toBe(303);
      expect(opened.headers.get('location')).toBe(path.split('?')[0]);
      const cookie = opened.headers.get('set-cookie') ?? '';
      expect(cookie).toMatch(/HttpOnly/);
      expect(cookie).toMatch(/SameSite=Strict/);
      expect(cookie).toMatch(/Path=\//);
      return sessionOf(opened.headers);
    };

    it('without a token, a cookie or a link: the sign-in page, 401, for / and for a job', async () => {
      for (const path of ['/', '/jobs/page-1']) {
        const answer = await service.call(null, 'GET', path);
        expect(answer.status).toBe(401);
        expect(answer.headers.get('content-type')).toBe('text/html; charset=utf-8');
        expect(answer.body).toContain('<label for="token">API token</label>');
        expect(answer.body).not.toContain('page-1</code>');
      }
    });

    it("with the owner's bearer token: the job's page, rendered from the stored state (bars, counts, failures by class, thumbnails in stage then slot order)", async () => {
      const summary = (await service.call(TOKENS.alice, 'GET', '/v1/jobs/page-1')).body;
      expect(summary.status).toBe('completed');
      const page = await service.call(TOKENS.alice, 'GET', '/jobs/page-1');
      expect(page.status).toBe(200);
      expect(page.headers.get('content-security-policy')).toContain("script-src 'self'");
      expect(bars(page.body)).toEqual({ total: { max: 5, value: 5 }, '0': { max: 3, value: 3 }, '1': { max: 2, value: 2 } });
      expect(page.body).toContain('<span class="count" id="count-0">3/3</span>');
      expect(thumbnails(page.body)).toEqual(['/v1/jobs/page-1/images/0/0', '/v1/jobs/page-1/images/0/1', '/v1/jobs/page-1/images/0/2', '/v1/jobs/page-1/images/1/0', '/v1/jobs/page-1/images/1/1']);
      // The two failed calls, by class, as the summary counts them.
      expect(summary.attempts.failed).toBe(2);
      expect(page.body).toContain('Failed attempts: <span id="failed">2</span>');
      for (const [errorClass, n] of Object.entries(summary.attempts.byClass as Record<string, number>)) expect(page.body).toContain(`<li data-class="${errorClass}">${errorClass} <span class="n">${n}</span></li>`);
      // Two failures, two replacement attempts; one or both delivered (the second failure may be the first one's replacement).
      expect(page.body).toMatch(/retries: <span id="retries">2<\/span> \(<span id="retries-delivered">[12]<\/span> delivered\)/);
      // The page reflects the job's whole log: the script follows after it.
      const seq = Number(/data-seq="(\d+)"/.exec(page.body)?.[1]);
      const replay = await (await openEvents(service, TOKENS.alice, 'page-1', 0)).rest();
      expect(seq).toBe(replay.at(-1)?.id);
      expect(page.body).toContain('data-status="completed"');
      expect(page.body).toMatch(/<button id="cancel" type="button" disabled>/);
    });

    it("a stage that ended short says why, with the provider's words (the shortfall's detail)", async () => {
      const summary = (await service.call(TOKENS.alice, 'GET', '/v1/jobs/page-blocked')).body;
      expect(summary.stages[0].shortfall).toMatchObject({ count: 2, reason: 'non_retryable', errorClass: 'prompt_blocked' });
      expect(summary.stages[0].shortfall.detail).toContain('PROHIBITED_CONTENT');
      const page = await service.call(TOKENS.alice, 'GET', '/jobs/page-blocked');
      expect(page.body).toContain(`<p class="shortfall" id="short-0" role="status">short by 2: non_retryable (prompt_blocked) \u2014 ${summary.stages[0].shortfall.detail}</p>`);
    });

    it('escapes what the job holds: a prompt with markup is text', async () => {
      const page = await service.call(TOKENS.alice, 'GET', '/jobs/page-1');
      expect(page.body).toContain('<p class="prompt">a &lt;b&gt;lighthouse&lt;/b&gt; &amp; &quot;sea&quot;</p>');
      expect(page.body).not.toContain('<b>lighthouse</b>');
    });

    it("another user's job, or one that does not exist: a 404 page", async () => {
      for (const id of ['page-bob', 'no-such-job']) {
        const page = await service.call(TOKENS.alice, 'GET', `/jobs/${id}`);
        expect(page.status).toBe(404);
        expect(page.body).toContain('No such job');
      }
    });

    it("a link opens its job: traded for a cookie (303 to the plain URL), which reaches that job's page, API, events and images only", async () => {
      const session = await openLink(await link('alice', 'page-1'));
      const cookie = { cookie: `imagegen_session=${session}` };
      const page = await service.call(null, 'GET', '/jobs/page-1', undefined, cookie);
      expect(page.status).toBe(200);
      expect(bars(page.body)['total']).toEqual({ max: 5, value: 5 });
      expect((await service.call(null, 'GET', '/v1/jobs/page-1', undefined, cookie)).body.jobId).toBe('page-1');
      const image = await fetch(`${service.url}/v1/jobs/page-1/images/1/1`, { headers: cookie });
      expect(image.status).toBe(200);
      expect(image.headers.get('content-type')).toBe('image/webp');
      const events = await openEvents(service, null, 'page-1', 0, { headers: cookie });
      expect((await events.rest()).at(-1)?.event).toBe('job:finished');
      // Nothing else: alice's other job, her list, her credits, submitting.
      expect((await service.call(null, 'GET', '/jobs/page-2', undefined, cookie)).status).toBe(403);
      expect((await service.call(null, 'GET', '/v1/jobs/page-2', undefined, cookie)).status).toBe(403);
      expect((await service.call(null, 'GET', '/v1/jobs', undefined, cookie)).status).toBe(403);
      expect((await service.call(null, 'GET', '/v1/credits', undefined, cookie)).status).toBe(403);
      expect((await service.call(null, 'POST', '/v1/jobs', { jobId: 'via-cookie', stages: [{ quantity: 1, prompt: 'x', mergedImageAttachId: inputId }] }, { ...cookie, 'x-imagegen-page': '1' })).status).toBe(403);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/via-cookie')).status).toBe(404);
      // The list page sends a one-job session to its job.
      const home = await service.call(null, 'GET', '/', undefined, cookie);
      expect(home.status).toBe(303);
      expect(home.headers.get('location')).toBe('/jobs/page-1');
    });

    it('a link that expired, was altered, names another job, or is a session: the sign-in page with a reason, no cookie', async () => {
      const secret = await serviceSecret(service.database, PAGE_SECRET_NAME);
      const past = new PageSessions(secret, { nowSeconds: () => Math.floor(Date.now() / 1000) - 120 });
      const expired = past.sign('link', { userId: 'alice', jobId: 'page-1', expiresAt: Math.floor(Date.now() / 1000) - 1 });
      const good = (await link('alice', 'page-1')).split('link=')[1] as string;
      const [kind, payload, mac] = good.split('.') as [string, string, string];
      const forged = Buffer.from(JSON.stringify({ u: 'bob', j: 'page-1', e: Math.floor(Date.now() / 1000) + 60 })).toString('base64url');
      const session = new PageSessions(secret).sign('session', { userId: 'alice', jobId: 'page-1', expiresAt: Math.floor(Date.now() / 1000) + 60 });
      const cases = [
        `/jobs/page-1?link=${expired}`,
        `/jobs/page-1?link=${kind}.${forged}.${mac}`,
        `/jobs/page-1?link=${kind}.${payload}.${mac.slice(0, -2)}AA`,
        `/jobs/page-2?link=${good}`,
        `/jobs/page-1?link=${session}`,
      ];
      for (const path of cases) {
        const answer = await service.call(null, 'GET', path);
        expect(answer.status, path).toBe(401);
        expect(answer.headers.get('set-cookie'), path).toBeNull();
        expect(answer.body).toContain('This link has expired or is not valid');
      }
    });

    it('a page session changes nothing without the page header (a cross-site form cannot send it); with it, cancel works', async () => {
      // A job held at its provider call, so there is something to cancel.
      const hold = new Gate();
      gemini.setHold(hold.hold);
      try {
        expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', { jobId: 'page-cancel', stages: [{ quantity: 4, prompt: 'z', mergedImageAttachId: inputId }] })).status).toBe(201);
        const cookie = { cookie: `imagegen_session=${await openLink(await link('alice', 'page-cancel'))}` };
        const page = await service.call(null, 'GET', '/jobs/page-cancel', undefined, cookie);
        expect(page.body).toMatch(/<button id="cancel" type="button">/);
        const refused = await service.call(null, 'DELETE', '/v1/jobs/page-cancel', undefined, cookie);
        expect(refused.status).toBe(403);
        expect(refused.body.error.message).toContain('x-imagegen-page: 1');
        expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/page-cancel')).body.status).not.toBe('cancelled');
        const cancelled = await service.call(null, 'DELETE', '/v1/jobs/page-cancel', undefined, { ...cookie, 'x-imagegen-page': '1' });
        expect(cancelled.status).toBe(202);
        // The runner notices the request within its cancel poll; the held calls stay held until
        // then (opened before, they could deliver every image first and the job end completed).
        const deadline = Date.now() + 10_000;
        while ((await service.call(TOKENS.alice, 'GET', '/v1/jobs/page-cancel')).body.status !== 'cancelled' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        hold.open();
        const frames = await (await openEvents(service, TOKENS.alice, 'page-cancel', 0)).rest();
        expect(frames.at(-1)?.data.status).toBe('cancelled');
      } finally {
        hold.open();
        gemini.setHold(gate.hold);
      }
    });

    it('the sign-in form: a wrong token is refused; a user token gives a session for all its jobs, listed on /; sign out ends it', async () => {
      const wrong = await service.call(null, 'POST', '/session', 'token=not-a-token-at-all&next=%2F', { 'content-type': 'application/x-www-form-urlencoded' });
      expect(wrong.status).toBe(401);
      expect(wrong.body).toContain('That token is not valid.');
      const admin = await service.call(null, 'POST', '/session', `token=${TOKENS.admin}`, { 'content-type': 'application/x-www-form-urlencoded' });
      expect(admin.status).toBe(403);
      // `next` stays on this site: an absolute or protocol-relative URL goes to /.
      const offsite = await service.call(null, 'POST', '/session', `token=${TOKENS.alice}&next=${encodeURIComponent('//evil.example/x')}`, { 'content-type': 'application/x-www-form-urlencoded' });
      expect(offsite.headers.get('location')).toBe('/');
      const signedIn = await service.call(null, 'POST', '/session', `token=${TOKENS.alice}&next=${encodeURIComponent('/jobs/page-2')}`, { 'content-type': 'application/x-www-form-urlencoded' });
      expect(signedIn.status).toBe(303);
      expect(signedIn.headers.get('location')).toBe('/jobs/page-2');
      const cookie = { cookie: `imagegen_session=${sessionOf(signedIn.headers)}` };
      const home = await service.call(null, 'GET', '/', undefined, cookie);
      expect(home.status).toBe(200);
      expect(home.body).toContain('href="/jobs/page-1"');
      expect(home.body).toContain('href="/jobs/page-2"');
      expect(home.body).not.toContain('page-bob');
      expect(home.body).toContain('<progress max="5" value="5" aria-label="images of page-1">5/5</progress>');
      expect((await service.call(null, 'GET', '/jobs/page-2', undefined, cookie)).status).toBe(200);
      expect((await service.call(null, 'GET', '/jobs/page-bob', undefined, cookie)).status).toBe(404);
      const out = await service.call(null, 'POST', '/logout', undefined, cookie);
      expect(out.status).toBe(303);
      expect(out.headers.get('set-cookie')).toMatch(/^imagegen_session=; Path=\/; Max-Age=0;/);
    });

    it('the event stream starts after ?after= (no snapshot); Last-Event-ID wins over it', async () => {
      const all = await (await openEvents(service, TOKENS.alice, 'page-1', 0)).rest();
      const after = await (await openEvents(service, TOKENS.alice, 'page-1', undefined, { query: '?after=3' })).rest();
      expect(after.map((f) => f.id)).toEqual(all.filter((f) => (f.id as number) > 3).map((f) => f.id));
      expect(after.some((f) => f.event === 'snapshot')).toBe(false);
      const both = await (await openEvents(service, TOKENS.alice, 'page-1', 5, { query: '?after=1' })).rest();
      expect(both[0]?.id).toBe(6);
      expect((await openEvents(service, TOKENS.alice, 'page-1', undefined, { query: '?after=x' })).status).toBe(400);
    });

    it("serves the page's script and style, and nothing else from their folder", async () => {
      const script = await service.call(null, 'GET', '/assets/page.js');
      expect(script.status).toBe(200);
      expect(script.headers.get('content-type')).toBe('text/javascript; charset=utf-8');
      expect(script.body).toContain("new EventSource(api + '/events?after='");
      expect((await service.call(null, 'GET', '/assets/page.css')).headers.get('content-type')).toBe('text/css; charset=utf-8');
      expect((await service.call(null, 'GET', '/assets/render.ts')).status).toBe(404);
      expect((await service.call(null, 'GET', '/assets/..%2Frender.ts')).status).toBe(404);
    });
  });
}
