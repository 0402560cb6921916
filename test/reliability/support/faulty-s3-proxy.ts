/**
 * A small HTTP proxy in front of an S3 server that fails some requests, the way a
 * flaky S3 endpoint does:
 *
 * - `503`: answers `503 SlowDown` without forwarding (nothing stored, read or deleted);
 * - `500`: answers `500 InternalError` without forwarding;
 * - `drop`: destroys the client's connection without answering (nothing forwarded);
 * - `stored_then_500`: forwards the request (a PUT IS stored, a DELETE IS done, a GET
 *   is served upstream), then answers 500: the client believes the request failed. On
 *   a PUT its object becomes an orphan the pipeline must not count, charge or leave behind.
 *
 * Which requests a rule may fail is decided by its `match` (method and a pattern of
 * the request path, query string included); by default, as before, the PUTs of
 * generated images. Of the matched requests, the first `failFirst` (and the ones
 * numbered in `failNth`, 1-based, counted from `configure`) fail for sure; every other
 * one fails with probability `failureRate`, drawn from a sequence seeded by `seed`.
 * The fault is drawn from `faults`. Unmatched requests pass untouched.
 *
 * Useful patterns (path-style URLs, as `S3_FORCE_PATH_STYLE` gives): an object GET is
 * `GET /<bucket>/<key>?x-id=GetObject`, a listing `GET /<bucket>?list-type=2&prefix=...`,
 * a delete `DELETE /<bucket>/<key>?x-id=DeleteObject` (see {@link S3_LIST}, {@link s3ObjectPath}).
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { seededRandom } from '../../../src/domain/random.js';

export type S3Fault = '503' | '500' | 'drop' | 'stored_then_500';

/** Which requests a rule applies to. Omitted fields match everything. */
export interface S3FaultMatch {
  /** HTTP method(s), upper case: `'GET'`, `['GET', 'DELETE']`. */
  readonly method?: string | readonly string[];
  /** Tested against the request path with its query string, e.g. `/bucket/inputs/u/x.png?x-id=GetObject`. */
  readonly path?: RegExp;
}

/** One fault rule (see the module comment). */
export interface S3FaultRule {
  readonly failureRate: number;
  readonly faults: readonly S3Fault[];
  readonly seed: number;
  /** Default: `{ method: 'PUT', path: /\/generated\// }`, the PUTs of generated images. */
  readonly match?: S3FaultMatch;
  /** The first N matched requests fail for sure (then `failureRate` applies). Default 0. */
  readonly failFirst?: number;
  /** These matched requests (1-based, counted from `configure`) fail for sure. */
  readonly failNth?: readonly number[];
}

/** One request the proxy saw. */
export interface S3ProxyRequest {
  readonly method: string;
  /** Path with query string. */
  readonly url: string;
  /** Index of the rule that matched it, if one did. */
  readonly rule: number | undefined;
  /** The fault injected, if any. */
  readonly fault: S3Fault | undefined;
}

export interface FaultyS3Proxy {
  readonly endpoint: string;
  /** Faults injected so far, by kind (every rule, every configuration). */
  readonly injected: Record<S3Fault, number>;
  /** Every request seen, in arrival order. */
  readonly requests: readonly S3ProxyRequest[];
  /** PUTs of generated images seen. */
  puts(): number;
  /** Requests matched by rule `rule` (default 0) of the current configuration. */
  matched(rule?: number): number;
  /**
   * Replaces the rules for the following requests (each a new seeded sequence, its
   * counts from 0). The first rule whose `match` fits a request decides it.
   */
  configure(...rules: readonly S3FaultRule[]): void;
  close(): Promise<void>;
}

/** Path pattern of a `ListObjectsV2` request. */
export const S3_LIST: RegExp = /[?&]list-type=2(&|$)/;

/** Path pattern of requests on one object (`/<bucket>/<key>`, any query), for `match.path`. */
export function s3ObjectPath(bucket: string, key: string | RegExp): RegExp {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  const keyPattern = typeof key === 'string' ? key.split('/').map((part) => escape(encodeURIComponent(part))).join('/') : key.source;
  return new RegExp(`^/${escape(bucket)}/${keyPattern}(\\?|$)`);
}

const DEFAULT_MATCH: S3FaultMatch = { method: 'PUT', path: /\/generated\// };

interface ActiveRule {
  readonly rule: S3FaultRule;
  readonly random: () => number;
  matched: number;
}

export async function startFaultyS3Proxy(options: { target: string } & S3FaultRule): Promise<FaultyS3Proxy> {
  const target = new URL(options.target);
  const activate = (rule: S3FaultRule): ActiveRule => ({ rule, random: seededRandom(rule.seed), matched: 0 });
  let rules: ActiveRule[] = [activate(options)];
  const injected: Record<S3Fault, number> = { '503': 0, '500': 0, drop: 0, stored_then_500: 0 };
  const requests: S3ProxyRequest[] = [];
  let puts = 0;

  const matches = (match: S3FaultMatch, method: string, url: string): boolean => {
    const methods = match.method === undefined ? undefined : typeof match.method === 'string' ? [match.method] : match.method;
    if (methods && !methods.includes(method)) return false;
    return match.path === undefined || match.path.test(url);
  };

  const decide = (method: string, url: string): { rule: number | undefined; fault: S3Fault | undefined } => {
    const index = rules.findIndex((r) => matches(r.rule.match ?? DEFAULT_MATCH, method, url));
    const active = rules[index];
    if (!active) return { rule: undefined, fault: undefined };
    const { rule } = active;
    const n = ++active.matched;
    const sure = n <= (rule.failFirst ?? 0) || (rule.failNth ?? []).includes(n);
    // One draw per matched request decides by chance, one more picks a failing request's
    // fault: the sequence this proxy always drew, so a rule without `failFirst` is as before.
    const chance = active.random() < rule.failureRate;
    const fault = sure || chance ? rule.faults[Math.floor(active.random() * rule.faults.length)] : undefined;
    return { rule: index, fault };
  };

  const s3Error = (res: ServerResponse, status: number, code: string) => {
    const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected by the test proxy</Message></Error>`;
    res.writeHead(status, { 'content-type': 'application/xml', 'content-length': String(Buffer.byteLength(body)) });
    res.end(body);
  };

  const forward = (req: IncomingMessage, body: Buffer, onResponse: (upstream: IncomingMessage, upstreamBody: Buffer) => void, onError: (e: Error) => void) => {
    const up = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (upstream) => {
        const chunks: Buffer[] = [];
        upstream.on('data', (c: Buffer) => chunks.push(c));
        upstream.on('end', () => onResponse(upstream, Buffer.concat(chunks)));
        upstream.on('error', onError);
      },
    );
    up.on('error', onError);
    up.end(body);
  };

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const method = req.method ?? '';
      const url = req.url ?? '';
      if (method === 'PUT' && url.includes('/generated/')) puts++;
      const { rule, fault } = decide(method, url);
      requests.push({ method, url, rule, fault });
      if (fault) injected[fault]++;
      if (fault === '503') return s3Error(res, 503, 'SlowDown');
      if (fault === '500') return s3Error(res, 500, 'InternalError');
      if (fault === 'drop') return void req.socket.destroy();
      forward(
        req,
        body,
        (upstream, upstreamBody) => {
          if (fault === 'stored_then_500') return s3Error(res, 500, 'InternalError');
          res.writeHead(upstream.statusCode ?? 502, upstream.headers);
          res.end(upstreamBody);
        },
        () => {
          if (!res.headersSent) s3Error(res, 502, 'BadGateway');
          else res.destroy();
        },
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    injected,
    requests,
    puts: () => puts,
    matched: (rule = 0) => rules[rule]?.matched ?? 0,
    configure(...next) {
      rules = next.map(activate);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
