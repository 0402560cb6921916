/**
 * The S3 store's client closes a kept-alive connection it has left idle for
 * `S3_IDLE_CONNECTION_MS` (under the 5 s after which Node's HTTP servers close theirs), so it
 * never writes a request on a connection the server is closing at that moment (the request
 * then failed `socket hang up`, one failed delivery with the image already paid for). A
 * request in progress longer than that is not cut. Against a plain HTTP server that keeps
 * connections for a minute and records when each one closes.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { firstValueFrom } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { S3_IDLE_CONNECTION_MS, S3ObjectStore } from '../../src/sinks/s3-object-store.js';

describe('S3ObjectStore: idle connections', () => {
  let server: Server;
  let port: number;
  /** Each connection: when it opened and closed (ms, performance.now()). */
  const connections: { opened: number; closed: number | undefined }[] = [];
  let holdMs = 0;

  beforeAll(async () => {
    server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        setTimeout(() => {
          res.writeHead(200, { ETag: '"e"', 'Content-Length': '0' });
          res.end();
        }, holdMs);
      });
    });
    server.keepAliveTimeout = 60_000;
    server.on('connection', (socket) => {
      const connection = { opened: performance.now(), closed: undefined as number | undefined };
      connections.push(connection);
      socket.on('close', () => (connection.closed = performance.now()));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  const store = () => new S3ObjectStore({ bucket: 'idle', endpoint: `http://127.0.0.1:${port}`, forcePathStyle: true, credentials: { accessKeyId: 'k', secretAccessKey: 's' } });

  it('closes a connection idle for S3_IDLE_CONNECTION_MS, the server still keeping it; the next request opens another', async () => {
    const s3 = store();
    try {
      const before = connections.length;
      await firstValueFrom(s3.put('a.webp', new Uint8Array([1]), 'image/webp'));
      const first = connections[before]!;
      const sent = performance.now();
      // Waits for the event "the connection closed", not for a time (the guard only bounds the wait).
      while (first.closed === undefined && performance.now() - sent < S3_IDLE_CONNECTION_MS + 10_000) await new Promise((r) => setTimeout(r, 50));
      expect(first.closed, 'the client closed its idle connection (the server keeps them 60 s)').toBeDefined();
      expect(first.closed! - sent).toBeGreaterThanOrEqual(S3_IDLE_CONNECTION_MS - 100);
      await firstValueFrom(s3.put('b.webp', new Uint8Array([2]), 'image/webp'));
      expect(connections.length).toBe(before + 2);
    } finally {
      s3.destroy();
    }
  }, 30_000);

  it('a request whose answer takes longer than S3_IDLE_CONNECTION_MS is not cut', async () => {
    const s3 = store();
    holdMs = S3_IDLE_CONNECTION_MS + 1_000;
    try {
      await firstValueFrom(s3.put('slow.webp', new Uint8Array([3]), 'image/webp'));
    } finally {
      holdMs = 0;
      s3.destroy();
    }
  }, 30_000);
});
