/**
 * A pass-through HTTP proxy in front of an S3 server that lets a test SEE what reached
 * the server (every request, in order) and HOLD one upload in the middle: the proxy
 * takes the request and its first body bytes, forwards nothing of it and never answers,
 * so the client is left waiting with its upload in flight. The test learns when that
 * upload reached the proxy and when the client gave up on it (closed the connection).
 *
 * Requests are logged as `<METHOD> <key>` (path-style: the bucket segment removed,
 * the query string dropped), e.g. `PUT cold/marker.txt`, `HEAD cold/marker.txt`.
 */
import { createServer, request, type ClientRequest, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface HeldUpload {
  /** Resolves when the upload reached the proxy (its headers and first body bytes arrived). */
  readonly reached: Promise<void>;
  /** Resolves when the client closed the held request without waiting for an answer. */
  readonly abandoned: Promise<void>;
}

export interface S3TapProxy {
  readonly endpoint: string;
  /** Every request so far, in arrival order, as `<METHOD> <key>`. */
  log(): readonly string[];
  /** Holds the next `PUT` of `key` (see the file comment). */
  holdPut(key: string): HeldUpload;
  close(): Promise<void>;
}

function keyOf(url: string | undefined): string {
  const path = decodeURIComponent((url ?? '/').split('?')[0] ?? '/');
  // `/<bucket>/<key>`: path-style addressing.
  return path.split('/').slice(2).join('/');
}

export async function startS3TapProxy(options: { target: string }): Promise<S3TapProxy> {
  const target = new URL(options.target);
  const log: string[] = [];
  const holds = new Map<string, { reached: () => void; abandoned: () => void }>();
  const upstreams = new Set<ClientRequest>();

  const forward = (req: IncomingMessage) =>
    request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers });

  const server = createServer((req, res) => {
    const key = keyOf(req.url);
    log.push(`${req.method ?? '?'} ${key}`);
    const hold = req.method === 'PUT' ? holds.get(key) : undefined;
    if (hold) {
      holds.delete(key);
      // Nothing of a held upload is forwarded: s3rver stores an object even for a PUT whose client went
      // away mid-body (or before sending any of it), where real S3 refuses an incomplete body.
      req.once('data', () => hold.reached());
      req.on('close', () => {
        if (!res.writableEnded) hold.abandoned();
      });
      return;
    }
    const up = forward(req);
    upstreams.add(up);
    up.on('response', (upstream) => {
      res.writeHead(upstream.statusCode ?? 502, upstream.headers);
      upstream.pipe(res);
      upstream.on('end', () => upstreams.delete(up));
    });
    up.on('error', () => {
      upstreams.delete(up);
      if (!res.headersSent) res.writeHead(502).end();
      else res.destroy();
    });
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    log: () => [...log],
    holdPut(key) {
      let reached!: () => void;
      let abandoned!: () => void;
      const held: HeldUpload = {
        reached: new Promise<void>((resolve) => (reached = resolve)),
        abandoned: new Promise<void>((resolve) => (abandoned = resolve)),
      };
      holds.set(key, { reached, abandoned });
      return held;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const up of upstreams) up.destroy();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
