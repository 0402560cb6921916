/**
 * A small HTTP proxy in front of an S3 server that fails some PUTs of generated
 * images, the way a flaky S3 endpoint does:
 *
 * - `503`: answers `503 SlowDown` without forwarding (nothing stored);
 * - `500`: answers `500 InternalError` without forwarding;
 * - `drop`: destroys the client's connection without answering (nothing stored);
 * - `stored_then_500`: forwards the PUT (the object IS stored), then answers 500:
 *   the client believes the upload failed, so its object becomes an orphan the
 *   pipeline must not count, charge or leave behind.
 *
 * Which PUTs fail is a seeded function of the PUT's number. Other requests pass.
 */
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { seededRandom } from '../../../src/domain/random.js';

export type S3Fault = '503' | '500' | 'drop' | 'stored_then_500';

export interface FaultyS3Proxy {
  readonly endpoint: string;
  /** Faults injected so far, by kind. */
  readonly injected: Record<S3Fault, number>;
  /** PUTs of generated images seen. */
  puts(): number;
  /** Changes the fault mix for the following PUTs (a new seeded sequence). */
  configure(options: { failureRate: number; faults: readonly S3Fault[]; seed: number }): void;
  close(): Promise<void>;
}

export async function startFaultyS3Proxy(options: { target: string; failureRate: number; faults: readonly S3Fault[]; seed: number }): Promise<FaultyS3Proxy> {
  const target = new URL(options.target);
  let mix = { failureRate: options.failureRate, faults: options.faults };
  let random = seededRandom(options.seed);
  const injected: Record<S3Fault, number> = { '503': 0, '500': 0, drop: 0, stored_then_500: 0 };
  let puts = 0;

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
      let fault: S3Fault | undefined;
      if (req.method === 'PUT' && (req.url ?? '').includes('/generated/')) {
        puts++;
        if (random() < mix.failureRate) fault = mix.faults[Math.floor(random() * mix.faults.length)];
      }
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
    puts: () => puts,
    configure(next) {
      mix = { failureRate: next.failureRate, faults: next.faults };
      random = seededRandom(next.seed);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
