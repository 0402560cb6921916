/**
 * A webhook receiver for tests: a real `node:http` server on 127.0.0.1 that verifies every
 * request with `standardwebhooks` (`Webhook.verify`) and answers by a script, one behaviour
 * per request in arrival order (then `ok` for the rest):
 *
 * - `ok`: 200; `fail`: 500; `redirect`: 302 to another path (must not be followed);
 * - `hang`: never answers (the sender's timeout must end it); the socket is destroyed at close;
 * - `reset`: destroys the socket at once (a connection reset).
 *
 * Each request is recorded with its headers, body, whether the signature verified, and the
 * behaviour it got; `delivered` are the verified requests answered 2xx.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { Webhook } from 'standardwebhooks';

export type ReceiverBehaviour = 'ok' | 'fail' | 'redirect' | 'hang' | 'reset';

export interface ReceivedWebhook {
  readonly path: string;
  readonly headers: IncomingMessage['headers'];
  readonly body: string;
  /** The parsed body when the signature verified, else null. */
  readonly verified: { readonly type: string; readonly timestamp: string; readonly data: Record<string, unknown> } | null;
  readonly behaviour: ReceiverBehaviour;
  readonly id: string;
}

export interface WebhookReceiver {
  readonly url: string;
  readonly port: number;
  readonly received: ReceivedWebhook[];
  /** Verified requests answered 2xx. */
  delivered(): ReceivedWebhook[];
  /** Replaces the secret signatures are verified with. */
  setSecret(secret: string): void;
  /** Appends behaviours for the next requests. */
  script(...behaviours: ReceiverBehaviour[]): void;
  /** Every request from now on gets `behaviour` (script entries first). */
  setDefault(behaviour: ReceiverBehaviour): void;
  close(): Promise<void>;
}

export async function startWebhookReceiver(options: { secret?: string; port?: number } = {}): Promise<WebhookReceiver> {
  let secret = options.secret ?? null;
  const script: ReceiverBehaviour[] = [];
  let fallback: ReceiverBehaviour = 'ok';
  const received: ReceivedWebhook[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      let verified: ReceivedWebhook['verified'] = null;
      try {
        if (secret !== null) verified = new Webhook(secret).verify(body, req.headers as Record<string, string>) as ReceivedWebhook['verified'];
      } catch {
        verified = null;
      }
      const behaviour = script.shift() ?? fallback;
      received.push({ path: req.url ?? '', headers: req.headers, body, verified, behaviour, id: String(req.headers['webhook-id'] ?? '') });
      switch (behaviour) {
        case 'ok':
          res.writeHead(verified ? 200 : 401).end('thanks');
          return;
        case 'fail':
          res.writeHead(500).end('broken');
          return;
        case 'redirect':
          res.writeHead(302, { location: '/elsewhere' }).end();
          return;
        case 'hang':
          return;
        case 'reset':
          req.socket.destroy();
          return;
      }
    });
  });
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/hooks`,
    port,
    received,
    delivered: () => received.filter((r) => r.verified !== null && r.behaviour === 'ok'),
    setSecret: (s) => (secret = s),
    script: (...behaviours) => script.push(...behaviours),
    setDefault: (b) => (fallback = b),
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
