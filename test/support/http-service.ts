/**
 * The service on a real port for tests: `buildServer` with real parts (PGlite or a scratch
 * PostgreSQL database, a folder store, a generator), listening on 127.0.0.1:0, plus an
 * HTTP client that speaks to it with `fetch`, and an SSE reader.
 *
 *   startService({ generator, http }) --> database --> folder store --> LocalJobRunner --> buildServer --> listen(0)
 *   service.call(token, method, path, body?)   JSON in, { status, headers, body } out
 *   openEvents(service, token, jobId, lastEventId?)   frames as they arrive
 *   service.close()   server (event streams end) --> runner --> database --> folder
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import sharp from 'sharp';
import { takeSseFrames } from './sse-frames.js';
import type { FastifyInstance } from 'fastify';
import { openDatabase, type Database } from '../../src/db/index.js';
import type { BatchGenerator, ImageGenerator } from '../../src/domain/ports.js';
import { AdaptiveConcurrencyLimiter } from '../../src/engine/adaptive-concurrency-limiter.js';
import { tokenSha256 } from '../../src/http/defaults.js';
import { buildServer, type ServerOptions } from '../../src/http/server.js';
import type { JobDispatcher } from '../../src/jobs/accept-job.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import type { ObjectStore } from '../../src/sinks/object-store.js';
import { LocalJobRunner } from '../../src/streams/local-runner.js';
import type { RunJobOptions } from '../../src/streams/run-job.js';
import { createScratchDatabase, type DatabaseKind, type ScratchDatabase } from './databases.js';

/** Tokens of the test users (16+ characters, as the configuration requires). */
export const TOKENS = Object.freeze({ alice: 'alice-token-0123456789', bob: 'bob-token-0123456789ab', carol: 'carol-token-0123456789', admin: 'admin-token-0123456789' });

/** Fast runs: small backoff, quick progress, a short cancel poll. */
export const FAST_RUNS: RunJobOptions = Object.freeze({ backoff: { baseMs: 5, maxMs: 50 }, progressIntervalMs: 20, cancelPollMs: 50, stageConcurrency: 4, batchPolling: { firstMs: 20, maxMs: 100 } });

export interface StartServiceOptions {
  readonly kind?: DatabaseKind;
  readonly generator: ImageGenerator;
  /** The batch API for `mode: "batch"` jobs. Default: none (such a job's stages end short `invalid_request`). */
  readonly batches?: BatchGenerator;
  /** Overrides of the HTTP settings (body limit, rate limit, streams per token, heartbeat). */
  readonly http?: Partial<ServerOptions['http']>;
  readonly server?: Partial<Omit<ServerOptions, 'http'>>;
  /** Jobs run at once by the in-process runner. Default 2. */
  readonly jobConcurrency?: number;
  /** Replaces the in-process runner (e.g. the queue on PostgreSQL). */
  readonly dispatcher?: (deps: { database: Database; store: ObjectStore }) => Promise<JobDispatcher & { stop?(): Promise<void> }>;
  /** A database to use instead of a scratch one (it is not closed by the service). */
  readonly database?: Database;
  /** A store to use instead of a temp folder. */
  readonly store?: ObjectStore;
  readonly metrics?: { readonly contentType: string; render(): Promise<string> };
}

export interface TestService {
  readonly url: string;
  readonly app: FastifyInstance;
  readonly database: Database;
  readonly store: ObjectStore;
  /** Every log line the service wrote, as text. */
  logs(): string;
  /** One request: JSON body (or raw bytes with a content type), JSON answer parsed when there is one. */
  call(token: string | null, method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<HttpAnswer>;
  close(): Promise<void>;
}

export interface HttpAnswer {
  readonly status: number;
  readonly headers: Headers;
  // The parsed JSON answer; tests read fields they expect by name.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a test's view of a JSON body
  readonly body: any;
}

/** A small PNG, the stages' input image. */
export async function inputPng(): Promise<Buffer> {
  return sharp({ create: { width: 32, height: 18, channels: 3, background: '#6a8caf' } }).png().toBuffer();
}

export async function startService(options: StartServiceOptions): Promise<TestService> {
  const cleanups: (() => Promise<void>)[] = [];
  const undo = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => {});
  };
  try {
    let database = options.database;
    if (!database) {
      const scratch: ScratchDatabase = await createScratchDatabase(options.kind ?? 'pglite');
      cleanups.push(() => scratch.dispose());
      const opened = await openDatabase(scratch.config);
      cleanups.push(() => opened.close());
      database = opened;
    }
    let store = options.store;
    if (!store) {
      const root = await mkdtemp(join(tmpdir(), 'imagegen-http-'));
      cleanups.push(() => rm(root, { recursive: true, force: true }));
      store = new FolderObjectStore({ root });
    }
    const chunks: string[] = [];
    const logger = pino(
      { level: 'debug', base: undefined, redact: { paths: ['headers.authorization', 'req.headers.authorization'], censor: '[redacted]' } },
      new Writable({
        write(chunk: Buffer, _encoding, done) {
          chunks.push(chunk.toString('utf8'));
          done();
        },
      }),
    );
    const limiter = new AdaptiveConcurrencyLimiter({ max: 8 });
    const deps = { database, store, generator: options.generator, batches: options.batches, limiter, logger };
    let dispatcher: JobDispatcher & { stop?(): Promise<void> };
    if (options.dispatcher) dispatcher = await options.dispatcher({ database, store });
    else dispatcher = new LocalJobRunner(deps, { jobConcurrency: options.jobConcurrency ?? 2, engine: FAST_RUNS });
    cleanups.push(async () => dispatcher.stop?.());
    const http: ServerOptions['http'] = {
      bodyLimitBytes: 30 * 1024 * 1024,
      rateLimitPerMinute: 10_000,
      maxStreamsPerToken: 8,
      heartbeatMs: 15_000,
      tokens: [
        { sha256: tokenSha256(TOKENS.alice), userId: 'alice' },
        { sha256: tokenSha256(TOKENS.bob), userId: 'bob' },
        { sha256: tokenSha256(TOKENS.carol), userId: 'carol' },
      ],
      adminTokens: [tokenSha256(TOKENS.admin)],
      ...options.http,
    };
    const app = await buildServer({ ...deps, dispatcher, metrics: options.metrics }, { http, pricePerImage: 1, maxQuantity: 1000, followPollMs: 200, ...options.server });
    cleanups.push(() => app.close());
    const url = await app.listen({ port: 0, host: '127.0.0.1' });
    const db = database;
    const st = store;
    return {
      url,
      app,
      database: db,
      store: st,
      logs: () => chunks.join(''),
      call: (token, method, path, body, headers) => httpCall(url, token, method, path, body, headers),
      close: undo,
    };
  } catch (error) {
    await undo();
    throw error;
  }
}

/** One request to the service at `url`: a JSON body (or raw bytes, a string, a form), the JSON answer parsed when there is one. */
export async function httpCall(url: string, token: string | null, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<HttpAnswer> {
  const h: Record<string, string> = { ...headers };
  const init: RequestInit = { method, headers: h, redirect: 'manual' };
  if (token !== null) h['authorization'] = `Bearer ${token}`;
  if (body instanceof Uint8Array || typeof body === 'string' || body instanceof FormData) init.body = body as NonNullable<RequestInit['body']>;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    h['content-type'] = 'application/json';
  }
  const response = await fetch(`${url}${path}`, init);
  const text = await response.text();
  const parsed: unknown = response.headers.get('content-type')?.includes('json') ? JSON.parse(text) : text;
  return { status: response.status, headers: response.headers, body: parsed };
}

/** One Server-Sent Events frame, or a comment (`: ping`). */
export interface SseFrame {
  readonly event: string;
  readonly id: number | null;
  // The parsed `data:` JSON.
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a test's view of an event
  readonly data: any;
}

/** An open event stream: frames as they come, `comments` seen so far, and a way to hang up. */
export interface EventStream {
  readonly status: number;
  readonly headers: Headers;
  /** The next frame; null when the stream has ended. */
  next(): Promise<SseFrame | null>;
  /** Every frame up to the end of the stream. */
  rest(): Promise<SseFrame[]>;
  comments(): number;
  /** Hangs up (the client going away). */
  close(): void;
}

/** Opens `GET /v1/jobs/:id/events` (with `Last-Event-ID` when given; `extra`: more headers, a query string). Non-200 answers come back with no frames. */
export async function openEvents(
  service: Pick<TestService, 'url'>,
  token: string | null,
  jobId: string,
  lastEventId?: number,
  extra: { readonly headers?: Record<string, string>; readonly query?: string } = {},
): Promise<EventStream & { body?: unknown }> {
  const abort = new AbortController();
  const headers: Record<string, string> = { accept: 'text/event-stream', ...extra.headers };
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (lastEventId !== undefined) headers['last-event-id'] = String(lastEventId);
  const response = await fetch(`${service.url}/v1/jobs/${jobId}/events${extra.query ?? ''}`, { headers, signal: abort.signal });
  if (response.status !== 200 || response.body === null) {
    const body: unknown = await response.json().catch(() => null);
    return { status: response.status, headers: response.headers, body, next: async () => null, rest: async () => [], comments: () => 0, close: () => abort.abort() };
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  let comments = 0;
  let ended = false;
  const ready: SseFrame[] = [];
  const next = async (): Promise<SseFrame | null> => {
    for (;;) {
      const frame = ready.shift();
      if (frame) return frame;
      const taken = takeSseFrames(buffer);
      buffer = taken.rest;
      comments += taken.comments;
      for (const raw of taken.frames) ready.push({ event: raw.event, id: raw.id, data: raw.data === undefined ? null : JSON.parse(raw.data) });
      if (ready.length > 0) continue;
      if (ended) return null;
      let chunk;
      try {
        chunk = await reader.read();
      } catch {
        ended = true;
        continue;
      }
      if (chunk.done) ended = true;
      else buffer += decoder.decode(chunk.value, { stream: true });
    }
  };
  return {
    status: response.status,
    headers: response.headers,
    next,
    async rest() {
      const frames: SseFrame[] = [];
      for (let frame = await next(); frame !== null; frame = await next()) frames.push(frame);
      return frames;
    },
    comments: () => comments,
    close: () => abort.abort(),
  };
}
