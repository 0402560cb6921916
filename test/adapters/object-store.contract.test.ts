import { existsSync, watch } from 'node:fs';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { firstValueFrom, lastValueFrom, type Subscription } from 'rxjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import { FolderObjectStore, SYNC_PUT_MAX_BYTES } from '../../src/sinks/folder-object-store.js';
import { isObjectNotFound, ObjectNotFoundError, type ObjectStore } from '../../src/sinks/object-store.js';
import { S3ObjectStore } from '../../src/sinks/s3-object-store.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';
import { startS3TapProxy } from '../support/s3-tap-proxy.js';

/** A store under test plus how to clean up after it. */
interface StoreFixture {
  readonly store: ObjectStore;
  close(): Promise<void>;
}

/**
 * A look past the store at its backend, so tests can prove what did (not) happen there with events
 * instead of sleeps. Folder store: the files on disk (temp files included) and inotify events. S3: a
 * proxy in front of s3rver that logs every request and can hold one upload in flight.
 */
interface StoreProbe {
  /**
   * What reached the backend for keys under `dir` (ending in `/`): folder store, the files in that
   * folder, temp files included (`dir/.tmp-...`); S3, the requests the server got (`PUT dir/key`).
   */
  touched(dir: string): Promise<string[]>;
  /**
   * Watches the next put of `key` (its folder must exist): `onReached` is called, synchronously, once
   * the write has begun at the backend (folder: its temp file exists; S3: the request and its first
   * body bytes reached the proxy, which holds it); `abandoned` resolves once the store gave it up
   * (folder: the temp file is gone again; S3: the client closed the connection).
   */
  watchPut(key: string, onReached: () => void): { readonly reached: Promise<void>; readonly abandoned: Promise<void> };
  /** What the backend holds under `dir`, read past the store: temp files and partial objects included. */
  leftovers(dir: string): Promise<string[]>;
}

interface StoreFactory {
  readonly name: string;
  /** Builds a fresh, empty store (`pageSize` only matters for S3 pagination). */
  make(options?: { pageSize?: number }): Promise<StoreFixture>;
  /** Builds a fresh, empty store with a {@link StoreProbe} on its backend. */
  makeProbed(): Promise<StoreFixture & { readonly probe: StoreProbe }>;
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
    async makeProbed() {
      const root = await mkdtemp(join(tmpdir(), 'folder-store-'));
      folders.push(root);
      const files = async (dir: string) => (await readdir(join(root, dir)).catch(() => [] as string[])).map((name) => `${dir}${name}`).sort();
      const watchers: ReturnType<typeof watch>[] = [];
      const probe: StoreProbe = {
        touched: files,
        leftovers: files,
        watchPut(key, onReached) {
          const folder = join(root, dirname(key));
          let temp: string | undefined;
          let reached!: () => void;
          let abandoned!: () => void;
          const watched = {
            reached: new Promise<void>((resolve) => (reached = resolve)),
            abandoned: new Promise<void>((resolve) => (abandoned = resolve)),
          };
          const watcher = watch(folder, (_event, name) => {
            const file = name?.toString();
            if (temp === undefined && file?.startsWith('.tmp-') && existsSync(join(folder, file))) {
              temp = file;
              onReached();
              reached();
            }
            if (temp !== undefined && file === temp && !existsSync(join(folder, temp))) {
              watcher.close();
              abandoned();
            }
          });
          watchers.push(watcher);
          return watched;
        },
      };
      return {
        store: new FolderObjectStore({ root }),
        probe,
        close: async () => {
          for (const w of watchers) w.close();
        },
      };
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
    async makeProbed() {
      if (!s3) throw new Error('s3rver not started');
      const bucket = `bucket-${bucketCounter++}`;
      const proxy = await startS3TapProxy({ target: s3.endpoint });
      const options = { bucket, region: s3.region, forcePathStyle: true, credentials: s3.credentials };
      const store = new S3ObjectStore({ ...options, endpoint: proxy.endpoint });
      // Reads the bucket directly, past the proxy.
      const direct = new S3ObjectStore({ ...options, endpoint: s3.endpoint });
      const probe: StoreProbe = {
        touched: async (dir) => proxy.log().filter((line) => line.split(' ')[1]?.startsWith(dir)),
        leftovers: (dir) => firstValueFrom(direct.list(dir)),
        watchPut(key, onReached) {
          const held = proxy.holdPut(key);
          return { reached: held.reached.then(onReached), abandoned: held.abandoned };
        },
      };
      return {
        store,
        probe,
        close: async () => {
          store.destroy();
          direct.destroy();
          await proxy.close();
        },
      };
    },
  },
];

/** `promise`, or a failure saying what did not happen within `ms`. */
async function within<T>(promise: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: did not happen within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

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

    async function withProbedStore(fn: (store: ObjectStore, probe: StoreProbe) => Promise<void>): Promise<void> {
      const fixture = await factory.makeProbed();
      try {
        await fn(fixture.store, fixture.probe);
      } finally {
        await fixture.close();
      }
    }

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
      withProbedStore(async (store, probe) => {
        const put$ = store.put('cold/key.txt', bytes('x'), 'text/plain');
        // A whole put of another key in the same folder, made after put$ was created: had creating put$
        // started anything, the backend would show it (a request, a temp file or the object) by now.
        await firstValueFrom(store.put('cold/marker.txt', bytes('m'), 'text/plain'));
        const touched = await probe.touched('cold/');
        expect(touched.length, 'the probe sees the marker').toBeGreaterThan(0);
        expect(touched.filter((entry) => !entry.endsWith('cold/marker.txt'))).toEqual([]);
        await firstValueFrom(put$);
        expect((await probe.touched('cold/')).filter((entry) => entry.endsWith('cold/key.txt'))).toHaveLength(1);
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

    it('unsubscribing while the write is in flight emits nothing, leaves no object and no partial or temp file, and the store stays usable', () =>
      withProbedStore(async (store, probe) => {
        // A neighbour in the same folder: it must survive, and the folder exists for the probe to watch.
        await firstValueFrom(store.put('u/seed.bin', bytes('seed'), 'application/octet-stream'));
        const events: string[] = [];
        let subscription: Subscription | undefined;
        // Unsubscribe the moment the write has begun at the backend (32 MiB: the folder store writes it in
        // 64 chunks, checking for the abort between them; S3: the proxy holds the upload, never answering).
        const put = probe.watchPut('u/big.bin', () => subscription?.unsubscribe());
        subscription = store.put('u/big.bin', new Uint8Array(32 * 1024 * 1024).fill(7), 'application/octet-stream').subscribe({
          next: () => events.push('next'),
          error: (e: unknown) => events.push(`error: ${String(e)}`),
          complete: () => events.push('complete'),
        });
        await within(put.reached, 'the write of u/big.bin reaching the backend');
        expect(subscription.closed).toBe(true);
        await within(put.abandoned, 'the store giving up the write of u/big.bin');
        // Read past the store: nothing of u/big.bin, neither the object nor a temp file or a partial object.
        expect(await probe.leftovers('u/')).toEqual(['u/seed.bin']);
        expect(await firstValueFrom(store.exists('u/big.bin'))).toBe(false);
        await firstValueFrom(store.put('u/after.bin', bytes('ok'), 'application/octet-stream'));
        expect(await firstValueFrom(store.exists('u/after.bin'))).toBe(true);
        expect(await probe.leftovers('u/')).toEqual(['u/after.bin', 'u/seed.bin']);
        expect(events).toEqual([]);
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

  it('a folder removed after a write (its made folder remembered) is made again by the next write', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('gone/a/one.webp', bytes('1'), 'image/webp'));
    await rm(join(root, 'gone'), { recursive: true });
    await firstValueFrom(store.put('gone/a/two.webp', bytes('22'), 'image/webp'));
    expect(await readdir(join(root, 'gone/a'))).toEqual(['two.webp']);
    expect(await firstValueFrom(store.get('gone/a/two.webp'))).toEqual(bytes('22'));
  });

  it(`writes up to ${SYNC_PUT_MAX_BYTES} bytes and beyond alike: the object whole, no temp file, overwrites atomic`, async () => {
    const store = new FolderObjectStore({ root });
    for (const size of [SYNC_PUT_MAX_BYTES, SYNC_PUT_MAX_BYTES + 1]) {
      await firstValueFrom(store.put(`sizes/${size}.bin`, new Uint8Array(size).fill(1), 'application/octet-stream'));
      await firstValueFrom(store.put(`sizes/${size}.bin`, new Uint8Array(size).fill(2), 'application/octet-stream'));
      const read = await firstValueFrom(store.get(`sizes/${size}.bin`));
      expect([read.byteLength, read.every((b) => b === 2)]).toEqual([size, true]);
    }
    expect((await readdir(join(root, 'sizes'))).sort()).toEqual([`${SYNC_PUT_MAX_BYTES}.bin`, `${SYNC_PUT_MAX_BYTES + 1}.bin`]);
  });

  it('a failed rename leaves no temp file (the target is a folder)', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('busy/inner/x.bin', bytes('1'), 'application/octet-stream'));
    await expectPipelineError(firstValueFrom(store.put('busy/inner', bytes('2'), 'application/octet-stream')), 'storage');
    expect(await readdir(join(root, 'busy'))).toEqual(['inner']);
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
