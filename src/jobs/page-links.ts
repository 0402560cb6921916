/**
 * Links to a job's live page, and the sessions a browser holds on the page: signed
 * grants, for a browser that cannot send a bearer header.
 *
 * - a **link** (`/jobs/<id>?link=<token>`): short-lived (`IMAGEGEN_LINK_TTL_SECONDS`,
 *   default 1 h), opens one job of one user; printed by `imagegen run --open` and
 *   `imagegen submit --open` ({@link jobPageLink}). Opening it trades it for a session
 *   cookie and redirects to the plain URL, so the link leaves the address bar.
 * - a **session** (the cookie, see `src/http/page-session.ts`): either one job (from a
 *   link) or all of a user's jobs (from the sign-in form, which takes an API token).
 *   Never an admin's: the page acts for one user.
 *
 * Both are `<kind>.<payload>.<mac>`: payload = base64url JSON `{u, j, e}` (user, job or
 * null, expiry in Unix seconds), mac = HMAC-SHA256 over `<kind>.<payload>` with the
 * database's `page-links` secret (`serviceSecret`), so every process on one database
 * makes and accepts the same links. Compared in constant time.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { serviceSecret, type Database } from '../db/index.js';
import type { Caller } from './caller.js';


type Kind = 'link' | 'session';

/** What a valid link or session says. `jobId` null: all of the user's jobs. */
export interface PageGrant {
  readonly userId: string;
  readonly jobId: string | null;
  /** Unix seconds. */
  readonly expiresAt: number;
}

/** A caller that came with a page session: a user, perhaps limited to one job. */
export interface PageCaller extends Caller {
  readonly jobScope: string | null;
  /** The key of its rate limit and stream count: a hash of the session, never the session. */
  readonly tokenKey: string;
}

/**
 * Signs and checks links and sessions with one secret.
 *
 * @example
 * const sessions = new PageSessions(await serviceSecret(database, PAGE_SECRET_NAME));
 * const url = `${base}/jobs/${jobId}?link=${sessions.sign('link', { userId, jobId, expiresAt: now + 3600 })}`;
 */
export class PageSessions {
  readonly #key: Buffer;
  readonly #now: () => number;

  constructor(secret: string, options: { readonly nowSeconds?: () => number } = {}) {
    if (secret.length < 32) throw new RangeError('a page secret has at least 32 characters');
    this.#key = Buffer.from(secret, 'utf8');
    this.#now = options.nowSeconds ?? (() => Math.floor(Date.now() / 1000));
  }

  /** Unix seconds now (the injected clock). */
  nowSeconds(): number {
    return this.#now();
  }

  sign(kind: Kind, grant: PageGrant): string {
    const payload = Buffer.from(JSON.stringify({ u: grant.userId, j: grant.jobId, e: grant.expiresAt }), 'utf8').toString('base64url');
    return `${kind}.${payload}.${this.#mac(kind, payload)}`;
  }

  /** The grant `token` carries, or null: malformed, another kind, a wrong MAC, or expired. */
  verify(kind: Kind, token: string): PageGrant | null {
    const parts = token.split('.');
    if (parts.length !== 3 || parts[0] !== kind) return null;
    const [, payload, mac] = parts as [string, string, string];
    const expected = Buffer.from(this.#mac(kind, payload), 'utf8');
    const given = Buffer.from(mac, 'utf8');
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
    let value: unknown;
    try {
      value = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    } catch {
      return null;
    }
    const { u, j, e } = (value ?? {}) as { u?: unknown; j?: unknown; e?: unknown };
    if (typeof u !== 'string' || !(typeof j === 'string' || j === null) || typeof e !== 'number') return null;
    if (e <= this.#now()) return null;
    return { userId: u, jobId: j, expiresAt: e };
  }

  /** The caller a session cookie value names, or null. */
  callerOf(cookie: string): PageCaller | null {
    const grant = this.verify('session', cookie);
    if (grant === null) return null;
    // The rate limit and stream count key: per session, never the cookie itself.
    const tokenKey = `session:${createHash('sha256').update(cookie, 'utf8').digest('hex')}`;
    return { userId: grant.userId, admin: false, tokenKey, jobScope: grant.jobId };
  }

  #mac(kind: Kind, payload: string): string {
    return createHmac('sha256', this.#key).update(`${kind}.${payload}`, 'utf8').digest('base64url');
  }
}

/** The name of the page's secret in `service_secrets`. */
export const PAGE_SECRET_NAME = 'page-links';

/**
 * A link that opens job `jobId`'s live page for `userId`, valid `ttlSeconds`:
 * `<baseUrl>/jobs/<jobId>?link=<token>`.
 */
export async function jobPageLink(database: Database, options: { readonly baseUrl: string; readonly userId: string; readonly jobId: string; readonly ttlSeconds: number }): Promise<{ url: string; expiresAt: Date }> {
  const sessions = new PageSessions(await serviceSecret(database, PAGE_SECRET_NAME));
  const expiresAt = sessions.nowSeconds() + options.ttlSeconds;
  const token = sessions.sign('link', { userId: options.userId, jobId: options.jobId, expiresAt });
  return { url: `${options.baseUrl}/jobs/${encodeURIComponent(options.jobId)}?link=${token}`, expiresAt: new Date(expiresAt * 1000) };
}
