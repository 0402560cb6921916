import { timingSafeEqual } from 'node:crypto';
import type { ApiToken } from '../config.js';
import type { Caller } from '../jobs/caller.js';
import { tokenSha256 } from './defaults.js';

/** A caller the service knows by its token: who it acts as, and the token's hash (the key of its rate limit and stream count). */
export interface TokenCaller extends Caller {
  /** SHA-256 (hex) of the token: safe to keep in memory as a key; never logged. */
  readonly tokenKey: string;
}

/** `Authorization: Bearer <token>` (RFC 6750 token alphabet); anything else is no token. */
const BEARER = /^Bearer[ ]+([A-Za-z0-9._~+/-]+=*)[ ]*$/i;

/**
 * Maps bearer tokens to callers. Holds SHA-256 hashes only (the configuration never holds
 * a token either). A presented token is hashed, then compared with every known hash in
 * constant time (`timingSafeEqual`), all of them, whichever matches: how long the check
 * takes says nothing about which token, or which part of one, is right.
 *
 * @example
 * const auth = new TokenAuthenticator({ tokens: config.http.tokens, adminTokens: config.http.adminTokens });
 * auth.authenticate(request.headers.authorization); // { userId: 'alice', admin: false, tokenKey } or null
 */
export class TokenAuthenticator {
  readonly #users: readonly { readonly hash: Buffer; readonly userId: string }[];
  readonly #admins: readonly Buffer[];

  constructor(config: { readonly tokens: readonly ApiToken[]; readonly adminTokens: readonly string[] }) {
    this.#users = config.tokens.map((t) => ({ hash: Buffer.from(t.sha256, 'hex'), userId: t.userId }));
    this.#admins = config.adminTokens.map((hash) => Buffer.from(hash, 'hex'));
  }

  /** Whether any token is configured: a service with none answers every call 401. */
  get configured(): boolean {
    return this.#users.length + this.#admins.length > 0;
  }

  /** The caller an `Authorization` header names, or null (no header, not a bearer token, or an unknown token). */
  authenticate(authorization: string | undefined): TokenCaller | null {
    const match = authorization === undefined ? null : BEARER.exec(authorization);
    if (match === null) return null;
    const tokenKey = tokenSha256(match[1] as string);
    const presented = Buffer.from(tokenKey, 'hex');
    let userId: string | null = null;
    for (const user of this.#users) {
      // Every entry is compared: no early exit.
      if (timingSafeEqual(user.hash, presented)) userId = user.userId;
    }
    let admin = false;
    for (const hash of this.#admins) {
      if (timingSafeEqual(hash, presented)) admin = true;
    }
    if (userId === null && !admin) return null;
    return { userId, admin, tokenKey };
  }

  /** What `console.log` and pino print: counts, never hashes. */
  toJSON(): unknown {
    return { tokens: this.#users.length, adminTokens: this.#admins.length };
  }
}
