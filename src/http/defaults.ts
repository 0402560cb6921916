/**
 * The service's defaults and the one way a bearer token is hashed. No Fastify import:
 * `src/config.ts` reads these without loading the web framework for every command.
 */
import { createHash } from 'node:crypto';

/** The defaults of `imagegen serve`, owned here (see `loadConfig`'s table). */
export const DEFAULT_HTTP_OPTIONS = Object.freeze({
  port: 8080,
  /** This machine only: exposing the API is a decision (`--host 0.0.0.0`). */
  host: '127.0.0.1',
  /** A 22 MiB input image in base64 (29.3 MiB) and its job fit; a raw or multipart upload of up to 30 MiB. */
  bodyLimitBytes: 30 * 1024 * 1024,
  /** Requests per minute per token (SSE streams and images included). */
  rateLimitPerMinute: 600,
  /** Event streams one token may hold open at once. */
  maxStreamsPerToken: 8,
  /** Comment lines on an idle event stream, so proxies do not close it (most close after 30-60 s). */
  heartbeatMs: 15_000,
  /** How long a slow event-stream client may leave its socket full before it is dropped (it resumes with `Last-Event-ID`). */
  drainTimeoutMs: 30_000,
  /** `/readyz`: how long the database and the storage have to answer. */
  readyTimeoutMs: 2_000,
  /** Lifetime of an S3 image URL `GET /v1/jobs/:id/images/:stage/:slot` redirects to. */
  presignExpiresSeconds: 300,
});

/** The live page's lifetimes (`IMAGEGEN_LINK_TTL_SECONDS`, `IMAGEGEN_PAGE_SESSION_SECONDS`). */
export const DEFAULT_PAGE_TTLS = Object.freeze({
  /** How long a printed link can be opened. */
  linkSeconds: 3600,
  /** How long the browser stays signed in after opening a link or signing in. */
  sessionSeconds: 12 * 3600,
});

/**
 * The SHA-256 (hex) of a bearer token: what the configuration keeps and what a request's
 * token is compared by. The token itself is never stored, logged or printed.
 */
export function tokenSha256(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}
