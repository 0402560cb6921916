import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom, lastValueFrom } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';
import { isObjectNotFound, ObjectNotFoundError, type ObjectStore } from '../../src/sinks/object-store.js';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';

/** A store under test plus how to clean up after it. */
interface StoreFixture {
  readonly store: ObjectStore;
  close(): Promise<void>;
}

interface StoreFactory {
  readonly name: string;
  /** Builds a fresh, empty store (`pageSize` only matters for S3 pagination). */
  make(options?: { pageSize?: number }): Promise<StoreFixture>;
  setup(): Promise<void>;
  teardown(): Promise<void>;
}

let s3: TestS3Server | undefined;
let bucketCounter = 0;
const folders: string[] = [];

const STORES: readonly StoreFactory[] = [
  {
    name: 'FolderObjectStore',
    async setup() {},
    async teardown() {
      await Promise.all(folders.map((f) => rm(f, { recursive: true, force: true })));
    },
    async make() {
      const root = await mkdtemp(join(tmpdir(), 'folder-store-'));
      folders.push(root);
      return { store: new FolderObjectStore({ root }), close: async () => {} };
    },
  },
  {
    name: 'S3ObjectStore (s3rver)',
    async setup() {
      // One bucket per test keeps tests independent without restarting the server.
      s3 = await startS3Server({ buckets: Array.from({ length: 30 }, (_, i) => `bucket-${i}`) });
    },
    async teardown() {
      await s3?.close();
    },
    async make(options = {}) {
      if (!s3) throw new Error('s3rver not started');
      const bucket = `bucket-${bucketCounter++}`;
      const store = new S3ObjectStore({
        bucket,
        endpoint: s3.endpoint,
        region: s3.region,
        forcePathStyle: true,
        credentials: s3.credentials,
        ...(options.pageSize === undefined ? {} : { pageSize: options.pageSize }),
      });
      return { store, close: async () => store.destroy() };
    },
  },
];

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

async function expectPipelineError(promise: Promise<unknown>, errorClass: string): Promise<PipelineError> {
  const error = await promise.then(
    () => {
      throw new Error('expected a PipelineError, got success');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PipelineError);
  expect((error as PipelineError).errorClass).toBe(errorClass);
  return error as PipelineError;
}

for (const factory of STORES) {
  describe(`ObjectStore contract: ${factory.name}`, () => {
    beforeAll(() => factory.setup());
    afterAll(() => factory.teardown());

    async function withStore(fn: (store: ObjectStore) => Promise<void>, options?: { pageSize?: number }): Promise<void> {
      const fixture = await factory.make(options);
      try {
        await fn(fixture.store);
      } finally {
        await fixture.close();
      }
    }

    it('put then get returns the same bytes, and put replaces', () =>
      withStore(async (store) => {
        const body = new Uint8Array(70_000).map((_, i) => (i * 31) % 256);
        await lastValueFrom(store.put('generated/j1/0/0-1.webp', body, 'image/webp'), { defaultValue: undefined });
        expect(Buffer.from(await firstValueFrom(store.get('generated/j1/0/0-1.webp')))).toEqual(Buffer.from(body));
        await lastValueFrom(store.put('generated/j1/0/0-1.webp', bytes('second'), 'image/webp'), { defaultValue: undefined });
        expect(new TextDecoder().decode(await firstValueFrom(store.get('generated/j1/0/0-1.webp')))).toBe('second');
      }));

    it('put emits exactly once and completes', () =>
      withStore(async (store) => {
        const seen: string[] = [];
        await new Promise<void>((resolve, reject) =>
          store.put('a/b.txt', bytes('x'), 'text/plain').subscribe({
            next: () => seen.push('next'),
            error: reject,
            complete: () => {
              seen.push('complete');
              resolve();
            },
          }),
        );
        expect(seen).toEqual(['next', 'complete']);
      }));

    it('is cold: nothing is written until subscription', () =>
      withStore(async (store) => {
        const put$ = store.put('cold/key.txt', bytes('x'), 'text/plain');
        await new Promise((r) => setTimeout(r, 50));
        expect(await firstValueFrom(store.exists('cold/key.txt'))).toBe(false);
        await firstValueFrom(put$);
        expect(await firstValueFrom(store.exists('cold/key.txt'))).toBe(true);
      }));

    it('get of a missing key fails with ObjectNotFoundError (class storage)', () =>
      withStore(async (store) => {
        const error = await expectPipelineError(firstValueFrom(store.get('missing/nothing.webp')), 'storage');
        expect(error).toBeInstanceOf(ObjectNotFoundError);
        expect(isObjectNotFound(error)).toBe(true);
        expect(error.retryable).toBe(true);
      }));

    it('exists tells present from missing keys', () =>
      withStore(async (store) => {
        await firstValueFrom(store.put('x/y/z.bin', bytes('1'), 'application/octet-stream'));
        expect(await firstValueFrom(store.exists('x/y/z.bin'))).toBe(true);
        expect(await firstValueFrom(store.exists('x/y/other.bin'))).toBe(false);
        expect(await firstValueFrom(store.exists('x/y'))).toBe(false);
      }));

    it('delete removes the object, and deleting a missing key is not an error', () =>
      withStore(async (store) => {
        await firstValueFrom(store.put('d/one.bin', bytes('1'), 'application/octet-stream'));
        await firstValueFrom(store.delete('d/one.bin'));
        expect(await firstValueFrom(store.exists('d/one.bin'))).toBe(false);
        await firstValueFrom(store.delete('d/one.bin'));
        await firstValueFrom(store.delete('never/was.bin'));
      }));

    it('list returns every key under a string prefix, sorted, and [] for none', () =>
      withStore(async (store) => {
        const keys = ['generated/j1/0/0-1.webp', 'generated/j1/0/1-1.webp', 'generated/j1/1/0-2.webp', 'generated/j10/0/0-1.webp', 'inputs/u/a.png'];
        for (const key of [...keys].reverse()) await firstValueFrom(store.put(key, bytes(key), 'image/webp'));
        expect(await firstValueFrom(store.list('generated/j1/'))).toEqual(keys.slice(0, 3));
        expect(await firstValueFrom(store.list('generated/j1'))).toEqual(keys.slice(0, 4));
        expect(await firstValueFrom(store.list('generated/j1/0/1'))).toEqual(['generated/j1/0/1-1.webp']);
        expect(await firstValueFrom(store.list(''))).toEqual(keys);
        expect(await firstValueFrom(store.list('nothing/'))).toEqual([]);
      }));

    it('list follows pagination until every key is returned', () =>
      withStore(
        async (store) => {
          const keys = Array.from({ length: 7 }, (_, i) => `p/k${i}.bin`);
          for (const key of keys) await firstValueFrom(store.put(key, bytes(key), 'application/octet-stream'));
          expect(await firstValueFrom(store.list('p/'))).toEqual(keys);
        },
        { pageSize: 2 },
      ));

    it.each([
      ['..', '../escape.txt'],
      ['.. in the middle', 'a/../../escape.txt'],
      ['absolute path', '/etc/passwd'],
      ['backslash', 'a\\..\\b.txt'],
      ['NUL', 'a/b\u0000.txt'],
      ['empty segment', 'a//b.txt'],
      ['trailing slash', 'a/b/'],
      ['empty key', ''],
      ['dot segment', './a.txt'],
      ['reserved temp prefix', 'a/.tmp-123'],
    ])('rejects an unsafe key (%s) with invalid_request on every method', (_why, key) =>
      withStore(async (store) => {
        await expectPipelineError(firstValueFrom(store.put(key, bytes('x'), 'text/plain')), 'invalid_request');
        await expectPipelineError(firstValueFrom(store.get(key)), 'invalid_request');
        await expectPipelineError(firstValueFrom(store.exists(key)), 'invalid_request');
        await expectPipelineError(firstValueFrom(store.delete(key)), 'invalid_request');
      }),
    );

    it('rejects an unsafe list prefix with invalid_request', () =>
      withStore(async (store) => {
        await expectPipelineError(firstValueFrom(store.list('../')), 'invalid_request');
        await expectPipelineError(firstValueFrom(store.list('/abs')), 'invalid_request');
      }));

    it('unsubscribing before completion emits nothing and leaves the store usable', () =>
      withStore(async (store) => {
        const events: string[] = [];
        const sub = store.put('u/big.bin', new Uint8Array(2_000_000), 'application/octet-stream').subscribe({
          next: () => events.push('next'),
          error: () => events.push('error'),
          complete: () => events.push('complete'),
        });
        sub.unsubscribe();
        await new Promise((r) => setTimeout(r, 100));
        expect(events).toEqual([]);
        await firstValueFrom(store.put('u/after.bin', bytes('ok'), 'application/octet-stream'));
        expect(await firstValueFrom(store.exists('u/after.bin'))).toBe(true);
      }));
  });
}

describe('FolderObjectStore specifics', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'folder-store-specific-'));
  });
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('writes the file under the root and leaves no temp file behind', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('deep/er/file.webp', bytes('abc'), 'image/webp'));
    expect(await readdir(join(root, 'deep/er'))).toEqual(['file.webp']);
  });

  it('list ignores leftover temp files of interrupted writes', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('t/real.bin', bytes('1'), 'application/octet-stream'));
    await writeFile(join(root, 't', '.tmp-leftover'), 'partial');
    expect(await firstValueFrom(store.list('t/'))).toEqual(['t/real.bin']);
  });

  it('an I/O failure is a storage error that names the key, not the root path', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('f/file.bin', bytes('1'), 'application/octet-stream'));
    // 'f/file.bin' is a file, so it cannot also be a folder.
    const error = await expectPipelineError(firstValueFrom(store.put('f/file.bin/child.bin', bytes('2'), 'application/octet-stream')), 'storage');
    expect(error.message).toContain('f/file.bin/child.bin');
    expect(error.message).not.toContain(root);
  });
});

describe('S3ObjectStore specifics', () => {
  let server: TestS3Server;
  beforeAll(async () => {
    server = await startS3Server({ buckets: ['specific-bucket'] });
  });
  afterAll(() => server.close());

  it('a missing bucket is a storage error with the HTTP status, not a not-found', async () => {
    const store = new S3ObjectStore({ bucket: 'no-such-bucket', endpoint: server.endpoint, forcePathStyle: true, credentials: server.credentials });
    try {
      const error = await expectPipelineError(firstValueFrom(store.get('a.txt')), 'storage');
      expect(error).not.toBeInstanceOf(ObjectNotFoundError);
      expect(error.httpStatus).toBe(404);
    } finally {
      store.destroy();
    }
  });

  it('an unreachable endpoint is a storage error after one attempt', async () => {
    const store = new S3ObjectStore({ bucket: 'specific-bucket', endpoint: 'http://127.0.0.1:1', forcePathStyle: true, credentials: server.credentials });
    try {
      await expectPipelineError(firstValueFrom(store.put('a.txt', bytes('x'), 'text/plain')), 'storage');
    } finally {
      store.destroy();
    }
  });
});
