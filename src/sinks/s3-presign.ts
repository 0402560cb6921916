/**
 * S3 presigned GET URLs (AWS Signature Version 4, query-string authentication), written
 * against the published algorithm with `node:crypto`: the AWS SDK's presigner is a package
 * of its own we do not ship. Pure functions, tested against AWS's documented example.
 */
import { createHash, createHmac } from 'node:crypto';

/** The longest a SigV4 presigned URL may live (7 days). */
export const MAX_PRESIGN_SECONDS = 7 * 24 * 60 * 60;

export interface S3Location {
  readonly bucket: string;
  readonly region: string;
  /** An S3-compatible server's endpoint (`http://127.0.0.1:9000`); unset: AWS (`https://s3.<region>.amazonaws.com`). */
  readonly endpoint?: string | undefined;
  /** `endpoint/bucket/key` rather than `bucket.endpoint/key`. */
  readonly forcePathStyle: boolean;
}

export interface S3SigningCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string | undefined;
}

/** RFC 3986 percent-encoding as SigV4 wants it: everything but `A-Z a-z 0-9 - _ . ~`. */
function uriEncode(text: string): string {
  return encodeURIComponent(text).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The URL of object `key` (each path segment encoded once; S3 does not encode the path twice when signing). */
export function s3ObjectUrl(location: S3Location, key: string): URL {
  const base = new URL(location.endpoint ?? `https://s3.${location.region}.amazonaws.com`);
  const path = key.split('/').map(uriEncode).join('/');
  const prefix = base.pathname.replace(/\/+$/, '');
  if (location.forcePathStyle) return new URL(`${base.protocol}//${base.host}${prefix}/${uriEncode(location.bucket)}/${path}`);
  return new URL(`${base.protocol}//${location.bucket}.${base.host}${prefix}/${path}`);
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data, 'utf8').digest();

/** `20130524T000000Z`. */
function amzDate(date: Date): string {
  return date.toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

/**
 * A presigned `GET` of `url`, valid for `expiresInSeconds` from `now`: anyone holding it
 * may read that one object until then, without credentials. Signs the `host` header only,
 * payload `UNSIGNED-PAYLOAD`.
 *
 * @example
 * presignS3Get(s3ObjectUrl({ bucket: 'images', region: 'us-east-1', forcePathStyle: false }, 'generated/j/0/1-1.webp'),
 *   { region: 'us-east-1', credentials, expiresInSeconds: 300, now: new Date() });
 */
export function presignS3Get(url: URL, options: { readonly region: string; readonly credentials: S3SigningCredentials; readonly expiresInSeconds: number; readonly now: Date }): string {
  const { region, credentials, expiresInSeconds, now } = options;
  if (!Number.isInteger(expiresInSeconds) || expiresInSeconds < 1 || expiresInSeconds > MAX_PRESIGN_SECONDS) {
    throw new RangeError(`expiresInSeconds must be an integer in 1..${MAX_PRESIGN_SECONDS}, got ${expiresInSeconds}`);
  }
  const stamp = amzDate(now);
  const day = stamp.slice(0, 8);
  const scope = `${day}/${region}/s3/aws4_request`;
  const query: [string, string][] = [
    ['X-Amz-Algorithm', 'AWS4-HMAC-SHA256'],
    ['X-Amz-Credential', `${credentials.accessKeyId}/${scope}`],
    ['X-Amz-Date', stamp],
    ['X-Amz-Expires', String(expiresInSeconds)],
    ['X-Amz-SignedHeaders', 'host'],
  ];
  if (credentials.sessionToken) query.push(['X-Amz-Security-Token', credentials.sessionToken]);
  const canonicalQuery = query
    .map(([k, v]) => [uriEncode(k), uriEncode(v)] as const)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const canonicalRequest = ['GET', url.pathname, canonicalQuery, `host:${url.host}\n`, 'host', 'UNSIGNED-PAYLOAD'].join('\n');
  const stringToSign = ['AWS4-HMAC-SHA256', stamp, scope, createHash('sha256').update(canonicalRequest, 'utf8').digest('hex')].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${credentials.secretAccessKey}`, day), region), 's3'), 'aws4_request');
  const signature = createHmac('sha256', key).update(stringToSign, 'utf8').digest('hex');
  return `${url.protocol}//${url.host}${url.pathname}?${canonicalQuery}&X-Amz-Signature=${signature}`;
}
