/**
 * `serveMetrics`: the worker's `GET /metrics` over plain node:http, on an ephemeral port,
 * talked to with real HTTP requests (fetch, and a raw keep-alive socket for `close`).
 */
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { serveMetrics, type MetricsServer } from '../../src/sinks/metrics-server.js';

const TEXT = 'text/plain; version=0.0.4; charset=utf-8';

describe('serveMetrics', () => {
  let server: MetricsServer | undefined;
  afterEach(async () => {
    await server?.close();
    server = undefined;
  });

  it('GET /metrics answers 200 with the endpoint\'s text and content type, read at each request', async () => {
    let renders = 0;
    server = await serveMetrics({ contentType: TEXT, render: async () => `imagegen_x ${++renders}\n` }, { port: 0, host: '127.0.0.1' });
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const first = await fetch(server.url);
    expect([first.status, first.headers.get('content-type'), await first.text()]).toEqual([200, TEXT, 'imagegen_x 1\n']);
    expect(await (await fetch(server.url)).text()).toBe('imagegen_x 2\n');
  });

  it('another path is 404, another method 405 (with Allow), HEAD has no body', async () => {
    server = await serveMetrics({ contentType: TEXT, render: async () => 'imagegen_x 1\n' }, { port: 0, host: '127.0.0.1' });
    const base = server.url.replace(/\/metrics$/, '');
    expect((await fetch(`${base}/`)).status).toBe(404);
    expect((await fetch(`${base}/metrics/extra`)).status).toBe(404);
    const post = await fetch(server.url, { method: 'POST' });
    expect([post.status, post.headers.get('allow')]).toEqual([405, 'GET, HEAD']);
    const head = await fetch(server.url, { method: 'HEAD' });
    expect([head.status, await head.text()]).toEqual([200, '']);
  });

  it('a render that fails is a 500 saying why; the server keeps serving', async () => {
    let fail = true;
    server = await serveMetrics({ contentType: TEXT, render: async () => (fail ? Promise.reject(new Error('registry broke')) : 'imagegen_x 1\n') }, { port: 0, host: '127.0.0.1' });
    const failed = await fetch(server.url);
    expect([failed.status, await failed.text()]).toEqual([500, 'metrics could not be read: registry broke\n']);
    fail = false;
    expect((await fetch(server.url)).status).toBe(200);
  });

  it('a port in use is refused at start (EADDRINUSE)', async () => {
    server = await serveMetrics({ contentType: TEXT, render: async () => '' }, { port: 0, host: '127.0.0.1' });
    const port = Number(new URL(server.url).port);
    await expect(serveMetrics({ contentType: TEXT, render: async () => '' }, { port, host: '127.0.0.1' })).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });

  it('close() ends a scraper\'s idle keep-alive connection instead of waiting for it', async () => {
    const open = await serveMetrics({ contentType: TEXT, render: async () => 'imagegen_x 1\n' }, { port: 0, host: '127.0.0.1' });
    const { port } = new URL(open.url);
    const socket = connect(Number(port), '127.0.0.1');
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const answered = new Promise<void>((resolve) => socket.once('data', () => resolve()));
    socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
    await answered;
    await open.close();
    await closed;
    expect(socket.destroyed).toBe(true);
  });
});
