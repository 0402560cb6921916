/**
 * One signed attempt over real sockets: the connection goes to the address the check
 * resolved (a pinned lookup: the host name is never resolved again), the answer is read
 * no further than 64 KB, and the submit-time check refuses hosts that resolve to refused
 * addresses.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { JobSpecError } from '../../src/domain/job-spec.js';
import { checkWebhookAtSubmit } from '../../src/jobs/submit-job.js';
import { sendWebhook, WEBHOOK_MAX_RESPONSE_BYTES } from '../../src/sinks/webhook-sender.js';
import type { LookupAll } from '../../src/sinks/webhook-target.js';

const SECRET = `whsec_${Buffer.alloc(32, 3).toString('base64')}`;
let server: Server | undefined;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = undefined;
});

async function listen(handler: Parameters<typeof createServer>[1], host = '127.0.0.1'): Promise<number> {
  server = createServer(handler);
  await new Promise<void>((resolve) => server!.listen(0, host, resolve));
  return (server.address() as AddressInfo).port;
}

describe('sendWebhook', () => {
  it('connects to the checked address: the host name is resolved once, by the check, never by the connect', async () => {
    const hosts: string[] = [];
    // Listening on 127.0.0.2 only: the system's answer for localhost (127.0.0.1 or ::1) would be refused.
    const port = await listen((req, res) => {
      hosts.push(String(req.headers.host));
      res.writeHead(204).end();
    }, '127.0.0.2');
    const looked: string[] = [];
    const lookup: LookupAll = async (hostname) => (looked.push(hostname), [{ address: '127.0.0.2', family: 4 }]);
    // `hooks.invalid` cannot resolve (RFC 6761): only the pinned address makes this connect.
    const outcome = await sendWebhook({ url: `http://hooks.invalid:${port}/x`, id: 'msg_1', body: '{}', secret: SECRET }, { timeoutMs: 2000, allowLocal: true, lookup });
    // http to a non-loopback host name is refused by the URL rule even with allow-local.
    expect(outcome).toMatchObject({ kind: 'error', error: 'forbidden_address' });
    expect(looked).toEqual([]);

    const pinned = await sendWebhook({ url: `http://localhost:${port}/x`, id: 'msg_1', body: '{}', secret: SECRET }, { timeoutMs: 2000, allowLocal: true, lookup });
    expect(pinned).toMatchObject({ kind: 'answered', statusCode: 204 });
    expect(looked).toEqual(['localhost']);
    expect(hosts).toEqual([`localhost:${port}`]);
  });

  it('reads at most 64 KB of an answer, then destroys the socket', async () => {
    let closedEarly: Promise<boolean> = Promise.resolve(false);
    const port = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      closedEarly = new Promise((resolve) => res.on('close', () => resolve(!res.writableFinished)));
      const chunk = Buffer.alloc(16 * 1024, 0x61);
      let sent = 0;
      const pump = () => {
        while (sent < 4 * 1024 * 1024) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      pump();
    });
    const outcome = await sendWebhook({ url: `http://127.0.0.1:${port}/x`, id: 'msg_2', body: '{}', secret: SECRET }, { timeoutMs: 5000, allowLocal: true });
    expect(outcome).toMatchObject({ kind: 'answered', statusCode: 200 });
    expect(await closedEarly).toBe(true);
    expect(WEBHOOK_MAX_RESPONSE_BYTES).toBe(65_536);
  });

  it('a refused connection is connection_refused', async () => {
    const port = await listen((_req, res) => res.end());
    await new Promise<void>((resolve) => server!.close(() => resolve()));
    server = undefined;
    const outcome = await sendWebhook({ url: `http://127.0.0.1:${port}/x`, id: 'msg_3', body: '{}', secret: SECRET }, { timeoutMs: 2000, allowLocal: true });
    expect(outcome).toMatchObject({ kind: 'error', error: 'connection_refused' });
  });
});

describe('checkWebhookAtSubmit', () => {
  const spec = { webhook: { url: 'https://hooks.example.com/x', events: ['job.finished'] as const } };
  const answering = (address: string): LookupAll => async () => [{ address, family: address.includes(':') ? 6 : 4 }];
  const failing = (code: string): LookupAll => async () => {
    throw Object.assign(new Error(code), { code });
  };

  it('refuses a host resolving to a refused address, or not resolving at all, on webhook.url', async () => {
    for (const [lookup, rule] of [
      [answering('192.168.1.10'), /^must not point to a private address \(hooks\.example\.com resolves to 192\.168\.1\.10\)/],
      [answering('::ffff:169.254.169.254'), /link-local/],
      [failing('ENOTFOUND'), /^host hooks\.example\.com does not resolve \(ENOTFOUND\)$/],
    ] as const) {
      const error = await checkWebhookAtSubmit(spec, { allowLocal: false, lookup }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(JobSpecError);
      expect((error as JobSpecError).problems).toEqual([{ field: 'webhook.url', rule: expect.stringMatching(rule) }]);
    }
  });

  it('accepts a public address, a resolver that cannot answer now (checked again at send), any address with allow-local', async () => {
    await expect(checkWebhookAtSubmit(spec, { allowLocal: false, lookup: answering('93.184.216.34') })).resolves.toBeUndefined();
    await expect(checkWebhookAtSubmit(spec, { allowLocal: false, lookup: failing('EAI_AGAIN') })).resolves.toBeUndefined();
    await expect(checkWebhookAtSubmit(spec, { allowLocal: true, lookup: answering('10.0.0.1') })).resolves.toBeUndefined();
    await expect(checkWebhookAtSubmit({}, { allowLocal: false, lookup: failing('ENOTFOUND') })).resolves.toBeUndefined();
  });
});
