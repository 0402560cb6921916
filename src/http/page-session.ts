/**
 * The live page's session cookie and what a session may reach (the grants themselves are
 * signed and checked in `src/jobs/page-links.ts`).
 */
import type { PageCaller } from '../jobs/page-links.js';

export { DEFAULT_PAGE_TTLS } from './defaults.js';
export { PAGE_SECRET_NAME, PageSessions, type PageCaller, type PageGrant } from '../jobs/page-links.js';

/** The cookie a page session lives in. */
export const SESSION_COOKIE = 'imagegen_session';

/** The header a page's own script sends with a request that changes something (cancel): a cross-site form cannot send it. */
export const PAGE_HEADER = 'x-imagegen-page';

/** A `Cookie` header's value for `name`, or undefined. */
export function cookieValue(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

/** `Set-Cookie` for a session (or its removal, `maxAgeSeconds` 0). `Secure` when the request came over https. */
export function sessionCookie(value: string, maxAgeSeconds: number, secure: boolean): string {
  return `${SESSION_COOKIE}=${value}; Path=/; Max-Age=${maxAgeSeconds}; HttpOnly; SameSite=Strict${secure ? '; Secure' : ''}`;
}

/**
 * Whether a request of a page session may go to `path`: a session limited to one job
 * reaches that job's page and API routes (`/jobs/<id>`, `/v1/jobs/<id>/...`), `/`, and the
 * page's own files, nothing else.
 */
export function sessionMayReach(caller: PageCaller, path: string): boolean {
  if (caller.jobScope === null) return true;
  // `/` sends a one-job session to its job's page.
  if (path === '/' || path === '/session' || path === '/logout' || path.startsWith('/assets/')) return true;
  const id = encodeURIComponent(caller.jobScope);
  return path === `/jobs/${id}` || path === `/v1/jobs/${id}` || path.startsWith(`/v1/jobs/${id}/`);
}
