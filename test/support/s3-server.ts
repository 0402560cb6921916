import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

/** A running s3rver (a real S3-compatible HTTP server, in its own process) for tests. */
export interface TestS3Server {
  /** `http://127.0.0.1:<port>` */
  readonly endpoint: string;
  readonly region: string;
  /** Buckets created at start. */
  readonly buckets: readonly string[];
  /** Credentials s3rver accepts (the fixed pair `S3RVER`/`S3RVER`). */
  readonly credentials: { readonly accessKeyId: string; readonly secretAccessKey: string };
  /** Process id of the server. */
  readonly pid: number | undefined;
  /** Stops the server process and deletes its temp folder. */
  close(): Promise<void>;
}

/** Options of {@link startS3Server}. */
export interface TestS3ServerOptions {
  /** Buckets to create (names of 3+ characters). Default `['test-bucket']`. */
  readonly buckets?: readonly string[];
  /** Give up starting after this many ms. Default 15000. */
  readonly startTimeoutMs?: number;
}

/**
 * The child's program. s3rver makes ListObjectsV2 continuation tokens with DES, which
 * OpenSSL 3 only has in its legacy provider: that is why the server runs in its own
 * `node --openssl-legacy-provider` process rather than in the test process (paginated
 * listings would fail with HTTP 500 otherwise). It exits when told (SIGTERM) or when
 * its parent goes away (stdin closes), so a crashed test run leaks no server.
 */
const CHILD_PROGRAM = `
const [s3rverUrl, directory, bucketsJson] = process.argv.slice(1);
const { default: S3rver } = await import(s3rverUrl);
const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory,
  configureBuckets: JSON.parse(bucketsJson).map((name) => ({ name })) });
const address = await server.run();
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  const closed = server.close();
  server.httpServer.closeAllConnections();
  await closed.catch(() => {});
  process.exit(0);
};
process.on('SIGTERM', stop);
process.stdin.on('end', stop);
process.stdin.resume();
process.stdout.write(JSON.stringify({ port: address.port }) + '\\n');
`;

/**
 * Starts s3rver on 127.0.0.1 (random port) with a fresh temp directory, in a child
 * process (see {@link CHILD_PROGRAM} for why).
 *
 * @example
 * const s3 = await startS3Server({ buckets: ['images'] });
 * const store = new S3ObjectStore({ bucket: 'images', endpoint: s3.endpoint, forcePathStyle: true, credentials: s3.credentials });
 * // ...
 * store.destroy();
 * await s3.close();
 */
export async function startS3Server(options: TestS3ServerOptions = {}): Promise<TestS3Server> {
  const buckets = options.buckets ?? ['test-bucket'];
  const directory = await mkdtemp(join(tmpdir(), 's3rver-'));
  const s3rverUrl = pathToFileURL(createRequire(import.meta.url).resolve('s3rver')).href;
  const child = spawn(
    process.execPath,
    ['--openssl-legacy-provider', '--input-type=module', '-e', CHILD_PROGRAM, s3rverUrl, directory, JSON.stringify(buckets)],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  let port: number;
  try {
    port = await readPort(child, options.startTimeoutMs ?? 15_000);
  } catch (error) {
    child.kill('SIGKILL');
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    region: 'us-east-1',
    buckets,
    credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
    pid: child.pid,
    async close() {
      child.kill('SIGTERM');
      const killTimer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(killTimer);
      await rm(directory, { recursive: true, force: true });
    },
  };
}

function readPort(child: ChildProcess, timeoutMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`s3rver did not start within ${timeoutMs} ms: ${err}`)), timeoutMs);
    child.stderr?.on('data', (chunk: Buffer) => {
      err = (err + chunk.toString('utf8')).slice(-4000);
    });
    child.stdout?.on('data', (chunk: Buffer) => {
      out += chunk.toString('utf8');
      const line = out.split('\n')[0];
      if (out.includes('\n') && line !== undefined) {
        clearTimeout(timer);
        try {
          resolve((JSON.parse(line) as { port: number }).port);
        } catch (error) {
          reject(error instanceof Error ? error : new Error(String(error)));
        }
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`s3rver exited before starting (code ${code}, signal ${signal}): ${err}`));
    });
  });
}
