/**
 * The live page: `GET /` (the user's recent jobs), `GET /jobs/:id` (one job, live),
 * signing in and out, and the page's two files. HTML for people: failures answer as
 * pages (401 with the sign-in form, 404 in words), not as the API's error object.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { JobNotFoundError } from '../../db/index.js';
import { jobPageState } from '../../jobs/job-page.js';
import { listJobs } from '../../jobs/list-jobs.js';
import type { TokenAuthenticator } from '../auth.js';
import type { RouteContext } from '../context.js';
import { PAGE_HEADERS, renderJobList, renderJobPage, renderMessage, renderSignIn } from '../page/render.js';
import { sessionCookie, type PageSessions } from '../page-session.js';

/** The page's own files, read once: nothing else is served from the folder. */
const ASSETS: Readonly<Record<string, { readonly type: string; readonly body: Buffer }>> = Object.freeze({
  'page.js': { type: 'text/javascript; charset=utf-8', body: readFileSync(new URL('../page/assets/page.js', import.meta.url)) },
  'page.css': { type: 'text/css; charset=utf-8', body: readFileSync(new URL('../page/assets/page.css', import.meta.url)) },
});

/** How many jobs `GET /` lists. */
const RECENT_JOBS = '50';

const JOB_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Where to go after signing in: a path on this site only (no `//host`, no scheme). */
function safeNext(next: unknown): string {
  return typeof next === 'string' && /^\/(?![/\\])[A-Za-z0-9_\-/.?=&%]*$/.test(next) ? next : '/';
}

function html(reply: FastifyReply, status: number, body: string): FastifyReply {
  return reply.code(status).headers(PAGE_HEADERS).send(body);
}

export interface PageRouteOptions {
  readonly ctx: RouteContext;
  readonly auth: TokenAuthenticator;
  readonly sessions: PageSessions;
  readonly sessionSeconds: number;
}

export async function pageRoutes(app: FastifyInstance, { ctx, auth, sessions, sessionSeconds }: PageRouteOptions): Promise<void> {
  const { deps } = ctx;
  // Rate-limited like the API, but a missing caller is a sign-in page, not a 401 error object.
  const config = { page: true };
  const schema = { hide: true };
  const secure = (request: FastifyRequest) => request.protocol === 'https';
  const signIn = (reply: FastifyReply, next: string, message: string | null, status = 401) => html(reply, status, renderSignIn(next, message));

  // The sign-in form posts `application/x-www-form-urlencoded`; only this plugin reads it.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string', bodyLimit: 8192 }, (_request, body, done) => {
    done(null, Object.fromEntries(new URLSearchParams(body as string)));
  });

  app.get('/', { config, schema }, async (request, reply) => {
    const caller = request.caller;
    if (caller === null) return signIn(reply, '/', null);
    if (caller.jobScope != null) return reply.redirect(`/jobs/${encodeURIComponent(caller.jobScope)}`, 303);
    if (caller.userId === null) return html(reply, 403, renderMessage('Not for admin tokens', 'The page shows one user\'s jobs: sign in with a user\'s API token.'));
    const page = await listJobs(deps.database, caller, { limit: RECENT_JOBS });
    return html(reply, 200, renderJobList(caller.userId, page.jobs));
  });

  app.get<{ Params: { id: string }; Querystring: { link?: string } }>('/jobs/:id', { config, schema }, async (request, reply) => {
    const { id } = request.params;
    const next = `/jobs/${encodeURIComponent(id)}`;
    if (!JOB_ID.test(id)) return html(reply, 404, renderMessage('No such job', `There is no job ${id}.`));
    const link = request.query.link;
    if (link !== undefined) {
      // A link is traded for a session cookie at once, and leaves the address bar.
      const grant = sessions.verify('link', link);
      if (grant === null || grant.jobId !== id) return signIn(reply, next, 'This link has expired or is not valid: ask for a new one, or sign in.');
      const session = sessions.sign('session', { userId: grant.userId, jobId: id, expiresAt: sessions.nowSeconds() + sessionSeconds });
      return reply.header('set-cookie', sessionCookie(session, sessionSeconds, secure(request))).header('cache-control', 'no-store').redirect(next, 303);
    }
    const caller = request.caller;
    if (caller === null) return signIn(reply, next, null);
    try {
      return html(reply, 200, renderJobPage(await jobPageState(deps.database, caller, id)));
    } catch (error) {
      if (error instanceof JobNotFoundError) return html(reply, 404, renderMessage('No such job', `There is no job ${id} you can see.`));
      throw error;
    }
  });

  app.get<{ Querystring: { next?: string } }>('/session', { config, schema }, async (request, reply) => signIn(reply, safeNext(request.query.next), null, 200));

  app.post<{ Body: { token?: unknown; next?: unknown } }>('/session', { config, schema }, async (request, reply) => {
    const body = (request.body ?? {}) as { token?: unknown; next?: unknown };
    const next = safeNext(body.next);
    const token = typeof body.token === 'string' ? body.token.trim() : '';
    const caller = token === '' ? null : auth.authenticate(`Bearer ${token}`);
    if (caller === null) return signIn(reply, next, 'That token is not valid.');
    if (caller.userId === null) return signIn(reply, next, 'An admin token acts for no user: sign in with a user\'s token.', 403);
    const session = sessions.sign('session', { userId: caller.userId, jobId: null, expiresAt: sessions.nowSeconds() + sessionSeconds });
    return reply.header('set-cookie', sessionCookie(session, sessionSeconds, secure(request))).header('cache-control', 'no-store').redirect(next, 303);
  });

  app.post('/logout', { config, schema }, async (request, reply) => reply.header('set-cookie', sessionCookie('', 0, secure(request))).redirect('/session', 303));

  app.get<{ Params: { name: string } }>('/assets/:name', { config: { public: true }, schema }, async (request, reply) => {
    const asset = ASSETS[request.params.name];
    if (asset === undefined) return reply.code(404).type('text/plain').send('not found');
    return reply.type(asset.type).header('cache-control', 'public, max-age=300').header('x-content-type-options', 'nosniff').send(asset.body);
  });
}
