import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { ApiError, GoogleGenAI } from '@google/genai';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bufferedFetch } from '../../src/adapters/buffered-fetch.js';
import { classifyGeminiError } from '../../src/adapters/classify-gemini-error.js';

/** A plain HTTP server whose answer each test sets. */
let server: Server;
let baseUrl: string;
let answer: (req: IncomingMessage, body: string, res: ServerResponse) => void = (_req, _body, res) => res.end();
const received: { method: string; url: string; headers: IncomingMessage['headers']; body: string }[] = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      received.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
      answer(req, body, res);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await dispatcher.destroy();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

const dispatcher = new Agent({ headersTimeout: 2_000, bodyTimeout: 300 });
const fetchFn = bufferedFetch(dispatcher);

describe('bufferedFetch: what the SDK reads of a unary answer', () => {
  it('sends the method, headers and body, and answers with status, ok, statusText, every header and the body once', async () => {
    answer = (_req, body, res) => {
      res.writeHead(201, { 'content-type': 'application/json', 'x-echo-length': String(body.length), 'set-cookie': ['a=1', 'b=2'] });
      res.end(JSON.stringify({ got: JSON.parse(body) as unknown }));
    };
    const headers = new Headers({ 'content-type': 'application/json', 'x-goog-api-key': 'k-123' });
    const response = await fetchFn(`${baseUrl}/v1beta/models/m:generateContent?x=1`, { method: 'POST', headers, body: JSON.stringify({ a: 'é' }) });
    const seen = received.at(-1)!;
    expect(seen).toMatchObject({ method: 'POST', url: '/v1beta/models/m:generateContent?x=1', body: '{"a":"é"}' });
    expect(seen.headers['x-goog-api-key']).toBe('k-123');
    expect(seen.headers['content-type']).toBe('application/json');

    expect(response.status).toBe(201);
    expect(response.ok).toBe(true);
    expect(response.statusText).toBe('Created');
    expect(response.headers.get('content-type')).toBe('application/json');
    expect(response.headers.get('x-echo-length')).toBe(String('{"a":"é"}'.length));
    expect(response.headers.getSetCookie()).toEqual(['a=1', 'b=2']);
    expect(response.bodyUsed).toBe(false);
    expect(await response.json()).toEqual({ got: { a: 'é' } });
    expect(response.bodyUsed).toBe(true);
    await expect(response.text()).rejects.toThrow(/already been read/);
  });

  it('a non-2xx answer is not ok and keeps its body; a URL object works as a string does', async () => {
    answer = (_req, _body, res) => {
      res.writeHead(503, { 'content-type': 'text/plain' });
      res.end('try later');
    };
    const response = await fetchFn(new URL(`${baseUrl}/x`), { method: 'GET' });
    expect(response.ok).toBe(false);
    expect(response.status).toBe(503);
    expect(response.statusText).toBe('Service Unavailable');
    expect(await response.text()).toBe('try later');
  });

  it('refuses a Request object and a body type the SDK never sends, before any request', async () => {
    const before = received.length;
    await expect(fetchFn(new Request(`${baseUrl}/x`))).rejects.toThrow(/Request object/);
    await expect(fetchFn(`${baseUrl}/x`, { method: 'POST', body: new Blob(['x']) })).rejects.toThrow(/body type/);
    expect(received.length).toBe(before);
  });
});

describe('bufferedFetch: failures carry what classifyGeminiError reads', () => {
  it('an abort rejects with an AbortError: cancelled, or a timeout when our deadline fired', async () => {
    answer = () => undefined; // never answers
    const abort = new AbortController();
    const pending = fetchFn(`${baseUrl}/hang`, { method: 'POST', body: '{}', signal: abort.signal });
    setTimeout(() => abort.abort(), 50);
    const error = await pending.catch((e: unknown) => e);
    expect((error as Error).name).toBe('AbortError');
    expect(classifyGeminiError(error).errorClass).toBe('cancelled');
    expect(classifyGeminiError(error, { timedOut: true }).errorClass).toBe('timeout');
  });

  it('a body that stops coming ends at the dispatcher body timeout: timeout', async () => {
    answer = (_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"candidates":');
    };
    const error = await fetchFn(`${baseUrl}/slow-body`, { method: 'POST', body: '{}' }).catch((e: unknown) => e);
    expect(classifyGeminiError(error).errorClass).toBe('timeout');
    expect(classifyGeminiError(error).message).toMatch(/timed out/);
  });

  it('a socket closed mid-answer, and a refused connection: network, with the code', async () => {
    answer = (req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '1000' });
      res.write('{"candidates":');
      setTimeout(() => req.socket.destroy(), 10);
    };
    const cut = await fetchFn(`${baseUrl}/cut`, { method: 'POST', body: '{}' }).catch((e: unknown) => e);
    expect(classifyGeminiError(cut).errorClass).toBe('network');
    expect(classifyGeminiError(cut).message).toMatch(/UND_ERR_SOCKET/);

    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const refused = await fetchFn(`http://127.0.0.1:${port}/`, { method: 'POST', body: '{}' }).catch((e: unknown) => e);
    expect(classifyGeminiError(refused).errorClass).toBe('network');
    expect(classifyGeminiError(refused).message).toMatch(/ECONNREFUSED/);
  });
});

describe('bufferedFetch under the real SDK', () => {
  const client = () => new GoogleGenAI({ apiKey: 'k-sdk', apiVersion: 'v1beta', httpOptions: { baseUrl } }).models;

  it('a JSON answer becomes the SDK response, with its headers', async () => {
    answer = (_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'x-answer': 'yes' });
      res.end(JSON.stringify({ candidates: [{ content: { role: 'model', parts: [{ text: 'hi' }] }, finishReason: 'STOP' }] }));
    };
    const response = await client().generateContent({ model: 'm', contents: 'hello', config: { httpOptions: { fetch: fetchFn } } });
    expect(response.text).toBe('hi');
    expect(response.sdkHttpResponse?.headers?.['x-answer']).toBe('yes');
    expect(received.at(-1)!.headers['x-goog-api-key']).toBe('k-sdk');
  });

  it('an error answer becomes an ApiError with its status, from a JSON body and from a plain one (statusText)', async () => {
    answer = (_req, _body, res) => {
      res.writeHead(429, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { code: 429, message: 'slow down', status: 'RESOURCE_EXHAUSTED' } }));
    };
    const limited = await client().generateContent({ model: 'm', contents: 'x', config: { httpOptions: { fetch: fetchFn } } }).catch((e: unknown) => e);
    expect(limited).toBeInstanceOf(ApiError);
    expect((limited as ApiError).status).toBe(429);
    expect(classifyGeminiError(limited).errorClass).toBe('rate_limited');

    answer = (_req, _body, res) => {
      res.writeHead(502, { 'content-type': 'text/html' });
      res.end('<html>bad gateway</html>');
    };
    const plain = await client().generateContent({ model: 'm', contents: 'x', config: { httpOptions: { fetch: fetchFn } } }).catch((e: unknown) => e);
    expect((plain as ApiError).status).toBe(502);
    expect((plain as ApiError).message).toContain('Bad Gateway');
    expect((plain as ApiError).message).toContain('bad gateway');
  });
});
