import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { LookupFunction } from 'node:net';
import { Webhook } from 'standardwebhooks';
import type { WebhookUrlPolicy } from '../domain/webhook.js';
import { resolveWebhookTarget, systemLookup, WebhookTargetError, type LookupAll, type ResolvedAddress } from './webhook-target.js';

/** The receiver's answer is read up to this many bytes; then the socket is destroyed. */
export const WEBHOOK_MAX_RESPONSE_BYTES = 64 * 1024;

/** What one attempt may end in, besides an HTTP status. */
export type WebhookErrorKind = 'timeout' | 'connection_reset' | 'connection_refused' | 'unreachable' | 'dns' | 'forbidden_address' | 'tls' | 'network';

/** How an attempt ended: the receiver answered (any status), it failed before an answer, or our own stop aborted it. */
export type WebhookOutcome =
  | { readonly kind: 'answered'; readonly statusCode: number; readonly durationMs: number; readonly retryAfterMs: number | undefined }
  | { readonly kind: 'error'; readonly error: WebhookErrorKind; readonly durationMs: number; readonly message: string }
  | { readonly kind: 'aborted'; readonly durationMs: number };

/** One signed request. */
export interface WebhookRequest {
  readonly url: string;
  /** The `webhook-id` (the same on every retry). */
  readonly id: string;
  /** The JSON body, exactly as signed. */
  readonly body: string;
  /** The user's `whsec_...` secret. */
  readonly secret: string;
  /** The `webhook-timestamp`; default now (each attempt signs anew). */
  readonly timestamp?: Date;
}

export interface WebhookSendOptions extends WebhookUrlPolicy {
  /** The whole attempt (resolve, connect, TLS, answer headers) may take this long. */
  readonly timeoutMs: number;
  /** Resolves host names (default the system's `dns.lookup`, every address). */
  readonly lookup?: LookupAll;
  /** Aborts the attempt (a shutdown): the outcome is `aborted`. */
  readonly signal?: AbortSignal;
}

/**
 * The Standard Webhooks headers of a request: `webhook-id`, `webhook-timestamp` (unix
 * seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`),
 * signed by `standardwebhooks` with the user's secret.
 */
export function signWebhook(secret: string, id: string, timestamp: Date, body: string): Record<'webhook-id' | 'webhook-timestamp' | 'webhook-signature', string> {
  const signature = new Webhook(secret).sign(id, timestamp, body);
  return { 'webhook-id': id, 'webhook-timestamp': String(Math.floor(timestamp.getTime() / 1000)), 'webhook-signature': signature };
}

/** A `lookup` that answers every name with the one address already checked (DNS rebinding cannot move the connect). */
function pinnedLookup(target: ResolvedAddress): LookupFunction {
  return ((_hostname: string, options: { all?: boolean }, callback: (...args: unknown[]) => void) => {
    if (options?.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  }) as unknown as LookupFunction;
}

/** The kind of a request error (the socket's `code`). */
export function webhookErrorKind(error: unknown): WebhookErrorKind {
  const code = String((error as NodeJS.ErrnoException)?.code ?? '');
  if (code === 'WEBHOOK_TIMEOUT' || code === 'ETIMEDOUT' || code === 'ESOCKETTIMEDOUT') return 'timeout';
  if (code === 'ECONNRESET' || code === 'EPIPE' || code === 'ECONNABORTED') return 'connection_reset';
  if (code === 'ECONNREFUSED') return 'connection_refused';
  if (code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'EHOSTDOWN' || code === 'ENETDOWN') return 'unreachable';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'EAI_FAIL') return 'dns';
  if (/^(ERR_TLS|ERR_SSL|CERT_|UNABLE_TO_|DEPTH_ZERO|SELF_SIGNED|EPROTO$|HOSTNAME_MISMATCH|ERR_OSSL)/.test(code)) return 'tls';
  return 'network';
}

/** `Retry-After` in ms (seconds or an HTTP date), or undefined. */
function retryAfterOf(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return undefined;
  if (/^[0-9]+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * Sends one signed webhook attempt with `node:http`/`node:https` (not `fetch`: the connect
 * address, redirects and the answer's size must be ours to decide):
 *
 * - the host is resolved and every address checked (`resolveWebhookTarget`), then the
 *   connection goes to the checked address (a pinned `lookup`; TLS still verifies the
 *   host name);
 * - `timeoutMs` bounds the whole attempt up to the answer's headers, and reading the
 *   answer after them;
 * - redirects are not followed: a 3xx is an answer like any other (the dispatcher counts
 *   only 2xx as delivered);
 * - at most {@link WEBHOOK_MAX_RESPONSE_BYTES} of the answer are read, then the socket is
 *   destroyed; nothing of it is kept;
 * - no connection is reused (`agent: false`).
 *
 * Never rejects: every failure is an outcome. The URL (it may carry credentials) and the
 * secret are never in an outcome's message.
 */
export async function sendWebhook(request: WebhookRequest, options: WebhookSendOptions): Promise<WebhookOutcome> {
  const started = performance.now();
  const elapsed = () => Math.round(performance.now() - started);
  const url = new URL(request.url);
  if (options.signal?.aborted) return { kind: 'aborted', durationMs: 0 };
  let target: ResolvedAddress;
  try {
    target = await withTimeout(resolveWebhookTarget(url, { allowLocal: options.allowLocal === true }, options.lookup ?? systemLookup), options.timeoutMs);
  } catch (error) {
    if (error instanceof WebhookTargetError) return { kind: 'error', error: error.kind, durationMs: elapsed(), message: error.rule };
    return { kind: 'error', error: webhookErrorKind(error), durationMs: elapsed(), message: 'resolving the host failed' };
  }
  const headers = {
    'content-type': 'application/json',
    'content-length': String(Buffer.byteLength(request.body)),
    'user-agent': 'imagegen-pipeline-webhooks/1',
    ...signWebhook(request.secret, request.id, request.timestamp ?? new Date(), request.body),
  };
  const client = url.protocol === 'https:' ? httpsRequest : httpRequest;
  const remaining = Math.max(1, options.timeoutMs - elapsed());
  return new Promise<WebhookOutcome>((resolve) => {
    let settled = false;
    const settle = (outcome: WebhookOutcome) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    const req = client({
      protocol: url.protocol,
      hostname: url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname,
      port: url.port === '' ? undefined : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method: 'POST',
      headers,
      agent: false,
      lookup: pinnedLookup(target),
      ...(url.username !== '' || url.password !== '' ? { auth: `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}` } : {}),
    });
    const timer = setTimeout(() => req.destroy(Object.assign(new Error('webhook attempt timed out'), { code: 'WEBHOOK_TIMEOUT' })), remaining);
    const onAbort = () => {
      settle({ kind: 'aborted', durationMs: elapsed() });
      req.destroy(Object.assign(new Error('webhook attempt aborted'), { code: 'WEBHOOK_ABORTED' }));
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    const done = () => {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
    };
    req.on('response', (res) => {
      settle({ kind: 'answered', statusCode: res.statusCode ?? 0, durationMs: elapsed(), retryAfterMs: retryAfterOf(res.headers['retry-after']) });
      let read = 0;
      res.on('data', (chunk: Buffer) => {
        read += chunk.length;
        if (read > WEBHOOK_MAX_RESPONSE_BYTES) req.destroy();
      });
      res.on('error', () => {});
      res.on('close', done);
    });
    req.on('error', (error) => {
      done();
      settle({ kind: 'error', error: webhookErrorKind(error), durationMs: elapsed(), message: (error as NodeJS.ErrnoException).code ?? 'request failed' });
    });
    req.on('close', done);
    req.end(request.body);
  });
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(Object.assign(new Error('timed out'), { code: 'WEBHOOK_TIMEOUT' })), ms);
    promise.then(
      (value) => (clearTimeout(timer), resolve(value)),
      (error: unknown) => (clearTimeout(timer), reject(error)),
    );
  });
}
