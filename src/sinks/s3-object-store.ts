import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { inspect } from 'node:util';
import type { Observable } from 'rxjs';
import { PipelineError } from '../domain/error-class.js';
import { fromAbortable, ObjectNotFoundError, validateObjectKey, type ObjectStore } from './object-store.js';
import { presignS3Get, s3ObjectUrl } from './s3-presign.js';

/** Static credentials for an S3-compatible server. */
export interface S3Credentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

/** Configuration of an {@link S3ObjectStore}. */
export interface S3ObjectStoreConfig {
  /** Bucket holding the objects (must exist). */
  readonly bucket: string;
  /** Region. Default `'us-east-1'`. */
  readonly region?: string;
  /** Endpoint of an S3-compatible server (MinIO, s3rver, R2...). Default: AWS. */
  readonly endpoint?: string;
  /** Path-style URLs (`endpoint/bucket/key`), needed by most S3-compatible servers. Default `false`. */
  readonly forcePathStyle?: boolean;
  /** Static credentials. Default: the SDK's credential chain. */
  readonly credentials?: S3Credentials;
  /** `ListObjectsV2` page size (`MaxKeys`). Default 1000. */
  readonly pageSize?: number;
  /** A client to use instead of building one (it is then not destroyed by {@link S3ObjectStore.destroy}). */
  readonly client?: S3Client;
}

/** How long the built client keeps an idle connection for the next request (ms): under the 5 s after which Node's HTTP servers close it. */
export const S3_IDLE_CONNECTION_MS = 4_000;

/**
 * {@link ObjectStore} on S3 or an S3-compatible server (`@aws-sdk/client-s3`).
 *
 * - The client it builds makes one attempt per call (`maxAttempts: 1`): the engine
 *   retries with its own budget and backoff. It closes a connection idle for
 *   {@link S3_IDLE_CONNECTION_MS} before reusing it could meet the server closing it.
 * - Unsubscribing aborts the request (`abortSignal`).
 * - Keys follow {@link validateObjectKey}, like every store. `list` follows
 *   `ListObjectsV2` continuation tokens until the listing is complete.
 * - Failures -> `storage` with the HTTP status; a missing object on `get` ->
 *   {@link ObjectNotFoundError}.
 *
 * @example
 * const store = new S3ObjectStore({ bucket: 'images', endpoint: 'http://127.0.0.1:9000', forcePathStyle: true,
 *   credentials: { accessKeyId: 'k', secretAccessKey: 's' } });
 */
export class S3ObjectStore implements ObjectStore {
  /** The effective configuration (without the client and credentials), frozen. */
  readonly config: Readonly<{ bucket: string; region: string; endpoint: string | undefined; forcePathStyle: boolean; pageSize: number }>;
  // #private: the SDK client holds the credentials; neither console.log, JSON.stringify
  // nor pino may walk into it.
  readonly #client: S3Client;
  private readonly ownsClient: boolean;

  constructor(config: S3ObjectStoreConfig) {
    this.config = Object.freeze({
      bucket: config.bucket,
      region: config.region ?? 'us-east-1',
      endpoint: config.endpoint,
      forcePathStyle: config.forcePathStyle ?? false,
      pageSize: config.pageSize ?? 1000,
    });
    this.ownsClient = config.client === undefined;
    this.#client =
      config.client ??
      new S3Client({
        region: this.config.region,
        forcePathStyle: this.config.forcePathStyle,
        maxAttempts: 1,
        // An idle kept-alive connection is closed by us before a server closes it (Node's servers
        // after 5 s; Node 20's agent ignores the server's `Keep-Alive: timeout` hint when it has
        // no timeout of its own): a request written on a connection the server was closing at
        // that moment failed (`socket hang up`), and with one attempt per call that failed a
        // delivery whose image was already paid for. Only idle connections: a request in
        // progress is not timed out by it.
        requestHandler: { httpAgent: { timeout: S3_IDLE_CONNECTION_MS }, httpsAgent: { timeout: S3_IDLE_CONNECTION_MS } },
        ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
        // Field by field, not a spread: a caller's secret may be non-enumerable (see config.ts).
        ...(config.credentials === undefined ? {} : { credentials: copyCredentials(config.credentials) }),
      });
  }

  /** What JSON.stringify and pino print: the settings, never the client or its credentials. */
  toJSON(): unknown {
    return { ...this.config };
  }

  /** What `console.log(store)` prints: the settings, never the client or its credentials. */
  [inspect.custom](): string {
    return `S3ObjectStore ${inspect(this.toJSON())}`;
  }

  put(key: string, body: Uint8Array, contentType: string): Observable<void> {
    return fromAbortable(async (abortSignal) => {
      validateObjectKey(key);
      await this.#client.send(
        new PutObjectCommand({ Bucket: this.config.bucket, Key: key, Body: body, ContentType: contentType, ContentLength: body.byteLength }),
        { abortSignal },
      );
    }, (error) => this.toError('put', key, error));
  }

  get(key: string): Observable<Uint8Array> {
    return fromAbortable(async (abortSignal) => {
      validateObjectKey(key);
      const out = await this.#client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
      if (out.Body === undefined) throw new Error('response has no body');
      return out.Body.transformToByteArray();
    }, (error) => this.toError('get', key, error));
  }

  exists(key: string): Observable<boolean> {
    return fromAbortable(async (abortSignal) => {
      validateObjectKey(key);
      try {
        await this.#client.send(new HeadObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
        return true;
      } catch (error) {
        if (isNotFound(error)) return false;
        throw error;
      }
    }, (error) => this.toError('exists', key, error));
  }

  delete(key: string): Observable<void> {
    return fromAbortable(async (abortSignal) => {
      validateObjectKey(key);
      // S3 answers 204 for a missing key too: deleting nothing is not an error.
      await this.#client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
    }, (error) => this.toError('delete', key, error));
  }

  list(prefix: string): Observable<string[]> {
    return fromAbortable(async (abortSignal) => {
      validateObjectKey(prefix, { allowPrefix: true });
      const keys: string[] = [];
      let token: string | undefined;
      do {
        const page = await this.#client.send(
          new ListObjectsV2Command({
            Bucket: this.config.bucket,
            ...(prefix === '' ? {} : { Prefix: prefix }),
            MaxKeys: this.config.pageSize,
            ...(token === undefined ? {} : { ContinuationToken: token }),
          }),
          { abortSignal },
        );
        for (const object of page.Contents ?? []) if (object.Key !== undefined) keys.push(object.Key);
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token !== undefined);
      return keys.sort();
    }, (error) => this.toError('list', prefix, error));
  }

  /**
   * A presigned `GET` URL of `key` (SigV4 query authentication, `s3-presign.ts`), valid for
   * `expiresInSeconds`: a service redirects clients to the bytes instead of carrying them.
   * Signed with the client's own credentials (static, or the SDK's chain); no request is made.
   */
  presignGet(key: string, options: { readonly expiresInSeconds: number }): Observable<string> {
    return fromAbortable(async () => {
      validateObjectKey(key);
      const { accessKeyId, secretAccessKey, sessionToken } = await this.#client.config.credentials();
      const url = s3ObjectUrl(this.config, key);
      return presignS3Get(url, { region: this.config.region, credentials: { accessKeyId, secretAccessKey, sessionToken }, expiresInSeconds: options.expiresInSeconds, now: new Date() });
    }, (error) => this.toError('presign', key, error));
  }

  /** Closes the sockets of the client this store built (a passed-in client is left alone). */
  destroy(): void {
    if (this.ownsClient) this.#client.destroy();
  }

  private toError(op: string, key: string, error: unknown): PipelineError {
    if (error instanceof PipelineError) return error;
    if (op === 'get' && isNotFound(error)) return new ObjectNotFoundError(key, { cause: error });
    const status = httpStatus(error);
    const name = error instanceof Error ? error.name : 'Error';
    const message = error instanceof Error ? error.message : String(error);
    return new PipelineError('storage', `S3 ${op} ${key} failed${status === undefined ? '' : ` (HTTP ${status})`}: ${name}: ${message}`, {
      httpStatus: status,
      cause: error,
    });
  }
}

function httpStatus(error: unknown): number | undefined {
  const status = (error as { $metadata?: { httpStatusCode?: unknown } } | null)?.$metadata?.httpStatusCode;
  return typeof status === 'number' ? status : undefined;
}

function isNotFound(error: unknown): boolean {
  const name = error instanceof Error ? error.name : undefined;
  if (name === 'NoSuchBucket') return false;
  return name === 'NoSuchKey' || name === 'NotFound' || httpStatus(error) === 404;
}

function copyCredentials(credentials: S3Credentials): S3Credentials {
  const { accessKeyId, secretAccessKey, sessionToken } = credentials;
  return sessionToken === undefined ? { accessKeyId, secretAccessKey } : { accessKeyId, secretAccessKey, sessionToken };
}
