import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, } from '@aws-sdk/client-s3';
import { PipelineError } from '../domain/error-class.js';
import { fromAbortable, ObjectNotFoundError, validateObjectKey } from './object-store.js';
/**
 * {@link ObjectStore} on S3 or an S3-compatible server (`@aws-sdk/client-s3`).
 *
 * - The client it builds makes one attempt per call (`maxAttempts: 1`): the engine
 *   retries with its own budget and backoff.
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
export class S3ObjectStore {
    /** The effective configuration (without the client and credentials), frozen. */
    config;
    client;
    ownsClient;
    constructor(config) {
        this.config = Object.freeze({
            bucket: config.bucket,
            region: config.region ?? 'us-east-1',
            endpoint: config.endpoint,
            forcePathStyle: config.forcePathStyle ?? false,
            pageSize: config.pageSize ?? 1000,
        });
        this.ownsClient = config.client === undefined;
        this.client =
            config.client ??
                new S3Client({
                    region: this.config.region,
                    forcePathStyle: this.config.forcePathStyle,
                    maxAttempts: 1,
                    ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
                    ...(config.credentials === undefined ? {} : { credentials: { ...config.credentials } }),
                });
    }
    put(key, body, contentType) {
        return fromAbortable(async (abortSignal) => {
            validateObjectKey(key);
            await this.client.send(new PutObjectCommand({ Bucket: this.config.bucket, Key: key, Body: body, ContentType: contentType, ContentLength: body.byteLength }), { abortSignal });
        }, (error) => this.toError('put', key, error));
    }
    get(key) {
        return fromAbortable(async (abortSignal) => {
            validateObjectKey(key);
            const out = await this.client.send(new GetObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
            if (out.Body === undefined)
                throw new Error('response has no body');
            return out.Body.transformToByteArray();
        }, (error) => this.toError('get', key, error));
    }
    exists(key) {
        return fromAbortable(async (abortSignal) => {
            validateObjectKey(key);
            try {
                await this.client.send(new HeadObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
                return true;
            }
            catch (error) {
                if (isNotFound(error))
                    return false;
                throw error;
            }
        }, (error) => this.toError('exists', key, error));
    }
    delete(key) {
        return fromAbortable(async (abortSignal) => {
            validateObjectKey(key);
            // S3 answers 204 for a missing key too: deleting nothing is not an error.
            await this.client.send(new DeleteObjectCommand({ Bucket: this.config.bucket, Key: key }), { abortSignal });
        }, (error) => this.toError('delete', key, error));
    }
    list(prefix) {
        return fromAbortable(async (abortSignal) => {
            validateObjectKey(prefix, { allowPrefix: true });
            const keys = [];
            let token;
            do {
                const page = await this.client.send(new ListObjectsV2Command({
                    Bucket: this.config.bucket,
                    ...(prefix === '' ? {} : { Prefix: prefix }),
                    MaxKeys: this.config.pageSize,
                    ...(token === undefined ? {} : { ContinuationToken: token }),
                }), { abortSignal });
                for (const object of page.Contents ?? [])
                    if (object.Key !== undefined)
                        keys.push(object.Key);
                token = page.IsTruncated ? page.NextContinuationToken : undefined;
            } while (token !== undefined);
            return keys.sort();
        }, (error) => this.toError('list', prefix, error));
    }
    /** Closes the sockets of the client this store built (a passed-in client is left alone). */
    destroy() {
        if (this.ownsClient)
            this.client.destroy();
    }
    toError(op, key, error) {
        if (error instanceof PipelineError)
            return error;
        if (op === 'get' && isNotFound(error))
            return new ObjectNotFoundError(key, { cause: error });
        const status = httpStatus(error);
        const name = error instanceof Error ? error.name : 'Error';
        const message = error instanceof Error ? error.message : String(error);
        return new PipelineError('storage', `S3 ${op} ${key} failed${status === undefined ? '' : ` (HTTP ${status})`}: ${name}: ${message}`, {
            httpStatus: status,
            cause: error,
        });
    }
}
function httpStatus(error) {
    const status = error?.$metadata?.httpStatusCode;
    return typeof status === 'number' ? status : undefined;
}
function isNotFound(error) {
    const name = error instanceof Error ? error.name : undefined;
    if (name === 'NoSuchBucket')
        return false;
    return name === 'NoSuchKey' || name === 'NotFound' || httpStatus(error) === 404;
}
