/**
 * Objects of ours that hold a secret (the Gemini key, the S3 secret key, the database
 * password) never print it: not through `util.inspect` / `console.log` (even with
 * `showHidden` and unlimited depth), not through `JSON.stringify`, not through a pino
 * logger (plain pino, and ours with its redaction paths), whether logged as a field
 * or as the merge object.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inspect } from 'node:util';
import pino from 'pino';
import { firstValueFrom } from 'rxjs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig, type PipelineConfig } from '../../src/config.js';
import { openDatabase } from '../../src/db/database.js';
import { PipelineError } from '../../src/domain/error-class.js';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { ThreadedImageGenerator } from '../../src/adapters/threaded-image-generator.js';
import { ImageThread } from '../../src/adapters/image-thread-link.js';
import { ThreadedWebpCodec } from '../../src/adapters/threaded-webp-codec.js';
import { cliEntry } from '../support/cli-entry.js';
import { createLogger, openPipeline } from '../../src/pipeline.js';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { createScratchDatabase, TEST_DATABASE_URL, TEST_PGLITE_TEMPLATE_DIR, type ScratchDatabase } from '../support/databases.js';

const API_KEY = 'AIzaSyHidden-KEY_0123456789abcdefghijkl';
const S3_SECRET = 's3-SECRET-wJalrXUtnFEMI-K7MDENG';
const DB_PASSWORD = 'db-PASSWORD-5f4e3d2c1b';
const SECRETS = [API_KEY, S3_SECRET, DB_PASSWORD];

/** Every printed form of `value` we promise is clean, by name. */
function printedForms(value: unknown): Record<string, string> {
  const plain: string[] = [];
  const plainLogger = pino({ level: 'info' }, { write: (line: string) => void plain.push(line) });
  plainLogger.info({ value }, 'as a field');
  plainLogger.info(value as object, 'as the merge object');
  const ours: string[] = [];
  const ourLogger = createLogger('info', { write: (line: string) => void ours.push(line) });
  ourLogger.info({ value }, 'as a field');
  ourLogger.info(value as object, 'as the merge object');
  return {
    'util.inspect': inspect(value),
    'util.inspect (depth Infinity, showHidden)': inspect(value, { depth: Number.POSITIVE_INFINITY, showHidden: true }),
    'util.inspect (nested in an object)': inspect({ nested: { value } }, { depth: Number.POSITIVE_INFINITY }),
    'JSON.stringify': JSON.stringify(value) ?? '',
    'JSON.stringify (nested)': JSON.stringify({ nested: [value] }),
    'plain pino': plain.join(''),
    'our pino logger': ours.join(''),
  };
}

/** `{ form: [secrets it shows] }` for the forms that show any: `{}` is clean. */
function leaks(value: unknown): Record<string, string[]> {
  const found: Record<string, string[]> = {};
  for (const [form, text] of Object.entries(printedForms(value))) {
    const shown = SECRETS.filter((s) => text.includes(s));
    if (shown.length > 0) found[form] = shown;
  }
  return found;
}

const ENV = {
  IMAGEGEN_PGLITE_TEMPLATE_DIR: TEST_PGLITE_TEMPLATE_DIR,
  GEMINI_API_KEY: API_KEY,
  S3_BUCKET: 'images',
  // Nothing listens on port 1: the store is built and used, never reached.
  S3_ENDPOINT: 'http://127.0.0.1:1',
  S3_ACCESS_KEY_ID: 'AKIDPUBLIC',
  S3_SECRET_ACCESS_KEY: S3_SECRET,
  IMAGEGEN_LOG_LEVEL: 'silent',
};

describe('objects holding secrets never print them', () => {
  let server: FakeGeminiServer;
  let dataDir: string;
  const cleanups: (() => Promise<void>)[] = [];
  beforeAll(async () => {
    server = await startFakeGeminiServer({ apiKey: API_KEY });
    dataDir = await mkdtemp(join(tmpdir(), 'imagegen-secrets-'));
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  afterAll(async () => {
    await server.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('the Gemini generator in its own thread: the key is in no printed form, before and after a call', async () => {
    const entry = pathToFileURL(join(dirname(await cliEntry()), 'adapters', 'image-thread.js'));
    const generator = new ThreadedImageGenerator({ gemini: { apiKey: API_KEY, baseUrl: server.url, timeoutMs: 10_000 }, entry });
    cleanups.push(() => generator.close());
    expect(leaks(generator)).toEqual({});
    await firstValueFrom(generator.generate({ jobId: 'j', stageIndex: 0, slotIndex: 0, attempt: 1, prompt: 'p', aspectRatio: '1:1', inputAttachId: 'a', input: null }));
    expect(leaks(generator)).toEqual({});
    expect(inspect(generator)).toContain('ThreadedImageGenerator');
    expect(JSON.parse(JSON.stringify(generator))).toMatchObject({ model: 'gemini-2.5-flash-image', baseUrl: server.url, thread: true });
    // The thread itself, and a codec on it, print their settings only.
    const thread = new ImageThread({ gemini: { apiKey: API_KEY, baseUrl: server.url }, entry });
    cleanups.push(() => thread.close());
    expect(leaks(thread)).toEqual({});
    expect(leaks(new ThreadedWebpCodec(thread))).toEqual({});
    expect(inspect(thread)).toContain('ImageThread');
    expect(JSON.parse(JSON.stringify(thread))).toEqual({ baseUrl: server.url, generates: true });
  }, 120_000);

  it('the Gemini generator: the key is in no printed form, before and after a call (and the forms still say what it is)', async () => {
    const generator = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url, timeoutMs: 10_000 });
    expect(leaks(generator)).toEqual({});
    await firstValueFrom(generator.generate({ jobId: 'j', stageIndex: 0, slotIndex: 0, attempt: 1, prompt: 'p', aspectRatio: '1:1', inputAttachId: 'a', input: null }));
    expect(server.requests.at(-1)?.apiKeyOk).toBe(true);
    expect(leaks(generator)).toEqual({});
    expect(inspect(generator)).toContain('GeminiImageGenerator');
    expect(inspect(generator)).toContain(server.url);
    expect(JSON.parse(JSON.stringify(generator))).toMatchObject({ model: 'gemini-2.5-flash-image', baseUrl: server.url });
  });

  it('a PipelineError from a server that echoes the key: neither its message nor its cause prints the key', async () => {
    server.setBehavior(() => ({ status: 400, message: 'API key {key} is not valid for this model' }));
    try {
      const generator = new GeminiImageGenerator({ apiKey: API_KEY, baseUrl: server.url, timeoutMs: 10_000 });
      const error = await firstValueFrom(
        generator.generate({ jobId: 'j', stageIndex: 0, slotIndex: 0, attempt: 1, prompt: 'p', aspectRatio: '1:1', inputAttachId: 'a', input: null }),
      ).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(PipelineError);
      expect((error as PipelineError).message).toContain('API key *** is not valid');
      expect(leaks(error)).toEqual({});
    } finally {
      server.setBehavior(() => 'image');
    }
  });

  it('the configuration from loadConfig: key, S3 secret and database password are in no printed form, yet readable by name', () => {
    const url = new URL('postgres://imagegen@db.example:5432/imagegen');
    url.password = DB_PASSWORD;
    // GEMINI_MODEL set: an unset model is left to the generator (undefined here, so not printed).
    const config: PipelineConfig = loadConfig({ ...ENV, GEMINI_MODEL: 'gemini-2.5-flash-image', DATABASE_URL: url.toString() }, { dataDir });
    expect(leaks(config)).toEqual({});
    expect(leaks(config.gemini)).toEqual({});
    expect(leaks(config.storage)).toEqual({});
    // The code that needs them still reads them.
    expect(config.gemini.apiKey).toBe(API_KEY);
    expect(config.storage.kind === 's3' && config.storage.credentials?.secretAccessKey).toBe(S3_SECRET);
    expect(config.databaseUrl).toBe(url.toString());
    // ...and the printed forms still show everything else.
    const json = JSON.parse(JSON.stringify(config)) as { databaseUrl: string; gemini: { apiKey: string; model: string }; storage: { credentials: { accessKeyId: string } } };
    expect(json.databaseUrl).toBe('postgres://imagegen:redacted@db.example:5432/imagegen');
    expect(json.gemini).toMatchObject({ apiKey: '[redacted]', model: 'gemini-2.5-flash-image' });
    expect(json.storage.credentials.accessKeyId).toBe('AKIDPUBLIC');
    expect(inspect(config)).toContain('AKIDPUBLIC');
  });

  it('the S3 store: the secret key is in no printed form, after a request resolved the credentials too', async () => {
    const store = new S3ObjectStore({
      bucket: 'images',
      endpoint: 'http://127.0.0.1:1',
      forcePathStyle: true,
      credentials: { accessKeyId: 'AKIDPUBLIC', secretAccessKey: S3_SECRET },
    });
    cleanups.push(async () => store.destroy());
    expect(leaks(store)).toEqual({});
    await expect(firstValueFrom(store.exists('generated/x.webp'))).rejects.toBeInstanceOf(PipelineError);
    expect(leaks(store)).toEqual({});
    expect(inspect(store)).toContain('images');
  });

  it('the Pipeline (PGlite, S3 store, Gemini generator) and its parts: no secret in any printed form; the store still signs with it', async () => {
    // An S3 endpoint that says yes to everything and records the signed requests.
    const authorizations: string[] = [];
    const s3 = createServer((req, res) => {
      authorizations.push(req.headers.authorization ?? '');
      res.writeHead(200, { 'content-length': '0' }).end();
    });
    await new Promise<void>((resolve) => s3.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => s3.close(() => resolve())));
    const endpoint = `http://127.0.0.1:${(s3.address() as AddressInfo).port}`;
    const pipeline = await openPipeline(loadConfig({ ...ENV, S3_ENDPOINT: endpoint }, { dataDir }));
    cleanups.push(() => pipeline.close());
    // The hidden secret still reaches the SDK: the request is signed (an unusable secret fails before sending).
    expect(await firstValueFrom(pipeline.store.exists('generated/x.webp'))).toBe(true);
    expect(authorizations).toHaveLength(1);
    expect(authorizations[0]).toContain('Credential=AKIDPUBLIC/');
    expect(leaks(pipeline)).toEqual({});
    expect(leaks(pipeline.generator)).toEqual({});
    expect(leaks(pipeline.store)).toEqual({});
    expect(leaks(pipeline.config)).toEqual({});
  });

  describe.skipIf(!TEST_DATABASE_URL)('on PostgreSQL (DATABASE_URL)', () => {
    let scratch: ScratchDatabase;
    let urlWithPassword: string;
    beforeAll(async () => {
      scratch = await createScratchDatabase('postgres');
      const url = new URL(scratch.config.databaseUrl ?? '');
      // The test server trusts local connections, so any password works: it is only there to be hidden.
      url.password = DB_PASSWORD;
      urlWithPassword = url.toString();
    });
    afterAll(() => scratch?.dispose());

    it('the database opened from a URL with a password prints where it is, password redacted, after queries and a LISTEN too', async () => {
      const database = await openDatabase({ databaseUrl: urlWithPassword });
      cleanups.push(() => database.close());
      await database.db.selectFrom('jobs').select('id').limit(1).execute();
      const stop = await database.listen('imagegen_secrets_test', () => {});
      cleanups.push(stop);
      expect(leaks(database)).toEqual({});
      const redacted = new URL(urlWithPassword);
      redacted.password = 'redacted';
      expect(JSON.parse(JSON.stringify(database))).toEqual({ kind: 'postgres', url: redacted.toString() });
      expect(inspect(database)).toContain(redacted.toString());
    });

    it('the Pipeline on that database: no secret in any printed form', async () => {
      const pipeline = await openPipeline(loadConfig({ ...ENV, DATABASE_URL: urlWithPassword }, { dataDir }));
      cleanups.push(() => pipeline.close());
      await pipeline.database.db.selectFrom('jobs').select('id').limit(1).execute();
      expect(pipeline.config.databaseUrl).toBe(urlWithPassword);
      expect(leaks(pipeline)).toEqual({});
      expect(leaks(pipeline.database)).toEqual({});
    });
  });
});
