import { Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import type { StoredWebp } from '../adapters/image-codec.js';

/**
 * Where image bytes live (generated WebPs, imported input images).
 *
 * Every method returns a cold Observable: nothing happens until subscription, and
 * unsubscribing aborts the underlying I/O where the backend allows it. Failures are
 * {@link PipelineError}s: `invalid_request` for a key that breaks {@link validateObjectKey}'s
 * rules, `storage` for everything else ({@link ObjectNotFoundError}, a `storage` error,
 * for a missing object on `get`).
 *
 * Keys are `/`-separated relative paths (see `storage-keys.ts`).
 */
export interface ObjectStore {
  /** Stores `body` under `key`, replacing any previous object. Emits once then completes. */
  put(key: string, body: Uint8Array, contentType: string): Observable<void>;
  /** The object's bytes; errors with {@link ObjectNotFoundError} when there is none. */
  get(key: string): Observable<Uint8Array>;
  /** Whether an object is stored under `key`. */
  exists(key: string): Observable<boolean>;
  /** Removes the object; removing a missing key is not an error. */
  delete(key: string): Observable<void>;
  /** Every key that starts with `prefix` (string prefix, as in S3), sorted. `''` lists everything. */
  list(prefix: string): Observable<string[]>;
  /**
   * Optional: removes leftovers of writes that never finished under `prefix` (a process
   * killed mid-`put`) and emits how many. Call it only when no `put` under `prefix` can
   * be running (the job's lease is held and its run has not started). S3 needs none:
   * a PUT is atomic and an aborted one leaves nothing.
   */
  removeIncomplete?(prefix: string): Observable<number>;
  /**
   * Optional: a URL anyone holding it may `GET` the object from, for `expiresInSeconds`
   * (an S3 presigned URL), so a service can redirect a client to the bytes instead of
   * carrying them. Emits once then completes; no request is made (the object may not
   * exist). A store without it (the folder) is read through {@link ObjectStore.get}.
   */
  presignGet?(key: string, options: { readonly expiresInSeconds: number }): Observable<string>;
  /**
   * Converts an image to WebP (`toWebp`: its validation, its `corrupt_image`) and stores the
   * WebP under `key`, in one step, answering the WebP's facts without its bytes. A store that
   * has it converts a delivery's image itself (the delivery's codec is not called): the
   * folder store whose writer is the image thread, where the conversion and the write are
   * one message each way and the WebP never crosses to the main thread (BENCHMARKS.md 11G).
   */
  readonly putWebp?: ((key: string, image: Uint8Array, options: { readonly quality: number }) => Observable<StoredWebp>) | undefined;
}

/** A `get` of a key that holds no object. Class `storage`; tell it apart with `instanceof` or {@link isObjectNotFound}. */
export class ObjectNotFoundError extends PipelineError {
  /** The missing key. */
  readonly key: string;
  constructor(key: string, options: { cause?: unknown } = {}) {
    super('storage', `object not found: ${key}`, { httpStatus: 404, cause: options.cause });
    this.key = key;
  }
}

/** Whether an error is an {@link ObjectNotFoundError}. */
export function isObjectNotFound(error: unknown): error is ObjectNotFoundError {
  return error instanceof ObjectNotFoundError;
}

/** Key segments starting with this are reserved for in-progress writes (folder store temp files). */
export const RESERVED_SEGMENT_PREFIX = '.tmp-';

/** Longest accepted key, in UTF-8 bytes (S3's limit). */
export const MAX_KEY_BYTES = 1024;

/**
 * Throws `PipelineError('invalid_request')` unless `key` is a safe relative object key:
 * non-empty, at most {@link MAX_KEY_BYTES}, no leading `/`, no backslash, no NUL or
 * control characters, no empty, `.` or `..` segment, no segment starting with
 * {@link RESERVED_SEGMENT_PREFIX}. The same rules hold for every store so a key that
 * works on a folder works on S3 and the other way round; for the folder store they
 * also guarantee a key can never name a file outside the root.
 *
 * With `allowPrefix`, `''` and a trailing `/` are accepted (for `list`).
 */
export function validateObjectKey(key: string, options: { allowPrefix?: boolean } = {}): void {
  const fail = (why: string): never => {
    throw new PipelineError('invalid_request', `invalid object key ${JSON.stringify(key.slice(0, 200))}: ${why}`);
  };
  if (typeof key !== 'string') fail('not a string');
  if (key === '') {
    if (options.allowPrefix) return;
    fail('empty');
  }
  if (Buffer.byteLength(key, 'utf8') > MAX_KEY_BYTES) fail(`longer than ${MAX_KEY_BYTES} bytes`);
  // eslint-disable-next-line no-control-regex -- control characters are exactly what we reject
  if (/[\u0000-\u001f\u007f]/.test(key)) fail('control character or NUL');
  if (key.includes('\\')) fail('backslash');
  if (key.startsWith('/')) fail('absolute path');
  if (/^[A-Za-z]:/.test(key)) fail('drive letter');
  const segments = key.split('/');
  if (options.allowPrefix && key.endsWith('/')) segments.pop();
  for (const segment of segments) {
    if (segment === '') fail('empty path segment');
    if (segment === '.' || segment === '..') fail(`"${segment}" segment`);
    if (segment.startsWith(RESERVED_SEGMENT_PREFIX)) fail(`segment starts with reserved "${RESERVED_SEGMENT_PREFIX}"`);
  }
}

/**
 * A cold Observable over an abortable promise: `run` starts on subscription and gets
 * a signal that is aborted on unsubscribe. Errors go through `mapError`. Used by the
 * store adapters; a result arriving after unsubscribe is dropped.
 */
export function fromAbortable<T>(run: (signal: AbortSignal) => Promise<T>, mapError: (error: unknown) => unknown): Observable<T> {
  return new Observable<T>((subscriber) => {
    const abort = new AbortController();
    let settled = false;
    run(abort.signal).then(
      (value) => {
        settled = true;
        subscriber.next(value);
        subscriber.complete();
      },
      (error: unknown) => {
        settled = true;
        subscriber.error(mapError(error));
      },
    );
    // A settled call has nothing to abort (an abort builds an AbortError, a stack trace, each time).
    return () => {
      if (!settled) abort.abort();
    };
  });
}
