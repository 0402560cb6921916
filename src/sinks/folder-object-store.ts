import { randomUUID } from 'node:crypto';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import { fromAbortable, ObjectNotFoundError, RESERVED_SEGMENT_PREFIX, validateObjectKey, type ObjectStore } from './object-store.js';
import type { StoredWebp } from '../adapters/image-codec.js';

/** Objects up to this size are written with synchronous calls (see {@link FolderObjectStore}): 1 MiB. */
export const SYNC_PUT_MAX_BYTES = 1024 * 1024;

/** Folders a store remembers having made, at most (then it forgets them all and starts again). */
const MAX_REMEMBERED_FOLDERS = 4096;

/** Configuration of a {@link FolderObjectStore}. */
export interface FolderObjectStoreConfig {
  /** The folder objects live under (created on first write). Key `a/b.webp` is the file `<root>/a/b.webp`. */
  readonly root: string;
  /**
   * Who writes an object of up to {@link SYNC_PUT_MAX_BYTES} ({@link writeFileAtomicSync} at an
   * absolute path inside the root): `ImageThread`, in its thread. Default: this thread.
   */
  readonly writer?: ObjectFileWriter | undefined;
}

/** Writes a file as {@link writeFileAtomicSync} does, elsewhere (another thread); rejects with the file system's error (its `code` kept). */
export interface ObjectFileWriter {
  writeFile(path: string, bytes: Uint8Array): Promise<void>;
  /**
   * Converts an image to WebP (`toWebp`) and writes the WebP as `writeFile` does, in one step;
   * answers its facts. Rejects with `toWebp`'s `corrupt_image` {@link PipelineError}, or the file
   * system's error. A writer that has it gives its store `putWebp`.
   */
  writeWebpFile?(path: string, image: Uint8Array, quality: number): Promise<StoredWebp>;
}

/**
 * The embedded default {@link ObjectStore}: one file per object under a root folder.
 *
 * - Keys are validated by {@link validateObjectKey} (`..`, absolute paths,
 *   backslashes, NUL, empty segments -> `invalid_request`) and the resolved path is
 *   checked to stay inside the root, so no key can name a file outside it.
 * - Writes are atomic: bytes go to a temp file (`.tmp-<uuid>`) in the target folder
 *   and are renamed over the target, so a reader sees the old object or the new one,
 *   never half of one. Folders are created as needed.
 * - An object of up to {@link SYNC_PUT_MAX_BYTES} (a delivered image) is written with
 *   synchronous calls ({@link writeFileAtomicSync}), by the `writer` when there is one (the
 *   image thread: `openPipeline` gives it) or in this thread. `fs/promises` hands each step
 *   (folder, open, write, close, rename) to libuv's pool, and on a 2-core machine each
 *   hand-off cost the main thread ~0.1 ms (~0.7 ms per image); a file's creation itself took
 *   0.2-1.5 ms on this machine's disk, which the writer keeps off the event loop
 *   (BENCHMARKS.md 11F). Once subscribed, such a write completes. Larger objects are written
 *   asynchronously, in chunks, and can be aborted. Folders are made once, not at every write.
 * - Content types are not stored (files carry none); `get` returns bytes only.
 * - I/O errors -> `storage`; a missing object on `get` -> {@link ObjectNotFoundError}.
 *
 * @example
 * const store = new FolderObjectStore({ root: './data/objects' });
 */
export class FolderObjectStore implements ObjectStore {
  /** The effective configuration (`root` resolved to an absolute path), frozen. */
  readonly config: Readonly<FolderObjectStoreConfig>;

  /** Folders this store made (or found) for its synchronous writes. */
  private readonly folders = new Set<string>();
  readonly #writer: ObjectFileWriter | undefined;

  /**
   * With a writer that converts (the image thread: `writeWebpFile`), a delivered image's
   * conversion and write in one step there (`ObjectStore.putWebp`); without one, undefined.
   * Once subscribed, it completes. Its errors: the conversion's `corrupt_image`, the write's `storage`.
   */
  readonly putWebp: ((key: string, image: Uint8Array, options: { readonly quality: number }) => Observable<StoredWebp>) | undefined;

  constructor(config: FolderObjectStoreConfig) {
    this.config = Object.freeze({ root: resolve(config.root) });
    this.#writer = config.writer;
    const writer = config.writer;
    this.putWebp =
      writer?.writeWebpFile === undefined
        ? undefined
        : (key, image, options) => fromAbortable(async () => writer.writeWebpFile!(this.pathOf(key), image, options.quality), (error) => this.toError('put', key, error));
  }

  put(key: string, body: Uint8Array, _contentType: string): Observable<void> {
    if (body.byteLength <= SYNC_PUT_MAX_BYTES) {
      const writer = this.#writer;
      if (writer !== undefined) return fromAbortable(async () => writer.writeFile(this.pathOf(key), body), (error) => this.toError('put', key, error));
      return new Observable<void>((subscriber) => {
        try {
          writeFileAtomicSync(this.pathOf(key), body, this.folders);
        } catch (error) {
          subscriber.error(this.toError('put', key, error));
          return;
        }
        subscriber.next();
        subscriber.complete();
      });
    }
    return fromAbortable(async (signal) => {
      const path = this.pathOf(key);
      await mkdir(dirname(path), { recursive: true });
      const temp = join(dirname(path), `${RESERVED_SEGMENT_PREFIX}${randomUUID()}`);
      try {
        await writeFile(temp, body, { signal });
        signal.throwIfAborted();
        await rename(temp, path);
      } catch (error) {
        await rm(temp, { force: true });
        throw error;
      }
    }, (error) => this.toError('put', key, error));
  }

  get(key: string): Observable<Uint8Array> {
    return fromAbortable(async (signal) => {
      const bytes = await readFile(this.pathOf(key), { signal });
      return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    }, (error) => this.toError('get', key, error));
  }

  exists(key: string): Observable<boolean> {
    return fromAbortable(async () => {
      try {
        return (await stat(this.pathOf(key))).isFile();
      } catch (error) {
        if (isMissing(error)) return false;
        throw error;
      }
    }, (error) => this.toError('exists', key, error));
  }

  delete(key: string): Observable<void> {
    return fromAbortable(async () => {
      const path = this.pathOf(key);
      try {
        if (!(await stat(path)).isFile()) return;
      } catch (error) {
        if (isMissing(error)) return;
        throw error;
      }
      await rm(path, { force: true });
    }, (error) => this.toError('delete', key, error));
  }

  list(prefix: string): Observable<string[]> {
    return fromAbortable(async (signal) => {
      validateObjectKey(prefix, { allowPrefix: true });
      // Walk only the deepest folder the prefix names, then filter by string prefix (S3 semantics).
      const dirKey = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
      const keys: string[] = [];
      await this.walk(dirKey, keys, signal);
      return keys.filter((k) => k.startsWith(prefix)).sort();
    }, (error) => this.toError('list', prefix, error));
  }

  /** Deletes temp files (`.tmp-*`) left under `prefix` by writes that never finished. */
  removeIncomplete(prefix: string): Observable<number> {
    return fromAbortable(async (signal) => {
      validateObjectKey(prefix, { allowPrefix: true });
      const dirKey = prefix.includes('/') ? prefix.slice(0, prefix.lastIndexOf('/')) : '';
      const temps: string[] = [];
      await this.walk(dirKey, temps, signal, true);
      for (const path of temps) await rm(path, { force: true });
      return temps.length;
    }, (error) => this.toError('removeIncomplete', prefix, error));
  }

  private async walk(dirKey: string, into: string[], signal: AbortSignal, tempsOnly = false): Promise<void> {
    signal.throwIfAborted();
    let entries;
    try {
      entries = await readdir(dirKey === '' ? this.config.root : this.pathOf(dirKey), { withFileTypes: true });
    } catch (error) {
      if (isMissing(error)) return;
      throw error;
    }
    for (const entry of entries) {
      const temp = entry.name.startsWith(RESERVED_SEGMENT_PREFIX);
      const key = dirKey === '' ? entry.name : `${dirKey}/${entry.name}`;
      if (temp) {
        if (tempsOnly && entry.isFile()) into.push(join(dirKey === '' ? this.config.root : this.pathOf(dirKey), entry.name));
        continue;
      }
      if (entry.isDirectory()) await this.walk(key, into, signal, tempsOnly);
      else if (entry.isFile() && !tempsOnly) into.push(key);
    }
  }

  /** Validated key -> absolute path, never outside the root. */
  private pathOf(key: string): string {
    validateObjectKey(key);
    const path = resolve(this.config.root, ...key.split('/'));
    if (!path.startsWith(this.config.root + sep)) {
      throw new PipelineError('invalid_request', `object key escapes the store root: ${JSON.stringify(key)}`);
    }
    return path;
  }

  private toError(op: string, key: string, error: unknown): PipelineError {
    if (error instanceof PipelineError) return error;
    if (op === 'get' && isMissing(error)) return new ObjectNotFoundError(key, { cause: error });
    const code = (error as { code?: unknown } | null)?.code;
    const message = error instanceof Error ? error.message.replace(this.config.root, '<root>') : String(error);
    return new PipelineError('storage', `folder store ${op} ${key} failed${typeof code === 'string' ? ` (${code})` : ''}: ${message}`, { cause: error });
  }
}

function isMissing(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  // ENOTDIR: a path segment is a file, so the object cannot exist either.
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * A small object's atomic write with synchronous calls: its folder made (once: `folders`
 * remembers the folders made or found), the bytes to a temp file (`.tmp-<uuid>`) beside the
 * target, then renamed over it. A remembered folder removed since (by hand, or a sweep) is
 * made again, once. A failed rename removes the temp file.
 */
export function writeFileAtomicSync(path: string, body: Uint8Array, folders: Set<string>): void {
  const folder = dirname(path);
  const made = folders.has(folder);
  if (!made) makeFolder(folder, folders);
  const temp = join(folder, `${RESERVED_SEGMENT_PREFIX}${randomUUID()}`);
  try {
    writeFileSync(temp, body);
  } catch (error) {
    if (!made || !isMissing(error)) throw error;
    folders.delete(folder);
    makeFolder(folder, folders);
    writeFileSync(temp, body);
  }
  try {
    renameSync(temp, path);
  } catch (error) {
    rmSync(temp, { force: true });
    throw error;
  }
}

function makeFolder(folder: string, folders: Set<string>): void {
  mkdirSync(folder, { recursive: true });
  if (folders.size >= MAX_REMEMBERED_FOLDERS) folders.clear();
  folders.add(folder);
}
