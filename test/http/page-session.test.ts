/** The live page's grants and cookie rules, as plain functions: signing, checking, expiry, what a session reaches, escaping. */
import { describe, expect, it } from 'vitest';
import { PageSessions } from '../../src/jobs/page-links.js';
import { cookieValue, sessionCookie, sessionMayReach } from '../../src/http/page-session.js';
import { escapeHtml, shortfallText } from '../../src/http/page/render.js';

const SECRET = 'a'.repeat(43);

describe('PageSessions', () => {
  const at = (now: number) => new PageSessions(SECRET, { nowSeconds: () => now });

  it('a signed grant checks until it expires, and never after (expiry is exclusive)', () => {
    const token = at(1000).sign('link', { userId: 'alice', jobId: 'j-1', expiresAt: 1060 });
    expect(at(1059).verify('link', token)).toEqual({ userId: 'alice', jobId: 'j-1', expiresAt: 1060 });
    expect(at(1060).verify('link', token)).toBeNull();
  });

  it('refuses another kind, another secret, a changed payload or MAC, and malformed tokens', () => {
    const sessions = at(0);
    const token = sessions.sign('session', { userId: 'alice', jobId: null, expiresAt: 100 });
    expect(sessions.verify('link', token)).toBeNull();
    expect(new PageSessions('b'.repeat(43), { nowSeconds: () => 0 }).verify('session', token)).toBeNull();
    const [kind, , mac] = token.split('.');
    const other = Buffer.from(JSON.stringify({ u: 'bob', j: null, e: 100 })).toString('base64url');
    expect(sessions.verify('session', `${kind}.${other}.${mac}`)).toBeNull();
    for (const bad of ['', 'session', 'session..', 'session.e30.', `${token}.x`, 'session.bm90IGpzb24.AAAA']) expect(sessions.verify('session', bad)).toBeNull();
  });

  it('a session names its caller, never an admin, keyed by a hash of the session', () => {
    const sessions = at(0);
    const cookie = sessions.sign('session', { userId: 'alice', jobId: 'j-1', expiresAt: 100 });
    const caller = sessions.callerOf(cookie);
    expect(caller).toMatchObject({ userId: 'alice', admin: false, jobScope: 'j-1' });
    expect(caller?.tokenKey).toMatch(/^session:[0-9a-f]{64}$/);
    expect(caller?.tokenKey).not.toContain(cookie);
  });

  it('refuses a short secret', () => {
    expect(() => new PageSessions('short')).toThrow(RangeError);
  });
});

describe('cookies and reach', () => {
  it('reads one cookie among several; writes HttpOnly, SameSite=Strict, Secure over https', () => {
    expect(cookieValue('a=1; imagegen_session=s.x.y; b=2', 'imagegen_session')).toBe('s.x.y');
    expect(cookieValue('a=1', 'imagegen_session')).toBeUndefined();
    expect(cookieValue(undefined, 'imagegen_session')).toBeUndefined();
    expect(sessionCookie('v', 60, false)).toBe('imagegen_session=v; Path=/; Max-Age=60; HttpOnly; SameSite=Strict');
    expect(sessionCookie('v', 60, true)).toMatch(/; Secure$/);
  });

  it("a one-job session reaches that job's page and API, /, sign-in and the assets; a user session reaches everything", () => {
    const oneJob = { userId: 'alice', admin: false, tokenKey: 'k', jobScope: 'j-1' };
    for (const path of ['/jobs/j-1', '/v1/jobs/j-1', '/v1/jobs/j-1/events', '/v1/jobs/j-1/images/0/1', '/', '/session', '/logout', '/assets/page.js']) expect(sessionMayReach(oneJob, path), path).toBe(true);
    for (const path of ['/jobs/j-2', '/jobs/j-1x', '/v1/jobs/j-10', '/v1/jobs', '/v1/credits', '/v1/attachments', '/metrics2']) expect(sessionMayReach(oneJob, path), path).toBe(false);
    expect(sessionMayReach({ ...oneJob, jobScope: null }, '/v1/jobs')).toBe(true);
  });
});

describe('rendering', () => {
  it('escapes the five HTML characters', () => {
    expect(escapeHtml(`<a href="x">'&'</a>`)).toBe('&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;');
  });

  it('says why a stage ended short, and nothing while its shortfall is pending', () => {
    expect(shortfallText(null)).toBe('');
    expect(shortfallText({ count: 2, reason: 'pending', errorClass: null, detail: null })).toBe('');
    expect(shortfallText({ count: 2, reason: 'budget_exhausted', errorClass: 'overloaded', detail: null })).toBe('short by 2: budget_exhausted (overloaded)');
    expect(shortfallText({ count: 1, reason: 'cancelled', errorClass: null, detail: null })).toBe('short by 1: cancelled');
    expect(shortfallText({ count: 3, reason: 'quota_exhausted', errorClass: 'quota_exhausted', detail: 'quota GenerateRequestsPerDayPerProjectPerModel (limit 0)' })).toBe(
      'short by 3: quota_exhausted (quota_exhausted) \u2014 quota GenerateRequestsPerDayPerProjectPerModel (limit 0)',
    );
  });
});
