/**
 * Secret sweep: the Gemini API key, the S3 secret access key and the password inside
 * DATABASE_URL never reach the output of the `imagegen` CLI (stdout and stderr of a child
 * process) or the database, at every log level `IMAGEGEN_LOG_LEVEL` accepts (trace and
 * debug, the talkative ones, included):
 *
 * - `imagegen run --json` of a 1 stage x 3 images job, provider `gemini` against the fake
 *   Gemini server failing every other call (503, 500 and 429 in turn, the first two with
 *   messages that echo the API key), images stored in a real s3rver (`S3_*`, with a
 *   distinctive secret): at every level on PostgreSQL through a DATABASE_URL holding a
 *   password (the local server trusts; any password connects) when DATABASE_URL is set,
 *   and on PGlite (at trace then; at every level without DATABASE_URL);
 * - at every level, `imagegen credits balance` with a DATABASE_URL (password included) on
 *   a closed port;
 * - `imagegen run --json` with S3_ENDPOINT on a closed port (the S3 secret set), at trace
 *   and info on PostgreSQL, at trace on PGlite without DATABASE_URL (see `pgliteLevels`
 *   below for why not at every level);
 * - `imagegen credits grant` at trace on each database.
 *
 * Then: no piece of 8+ characters of any secret in any process's stdout or stderr, nor in
 * any row of any table (attempts, jobs, stages, ...). Guards that keep this test honest:
 * the runs completed exactly (the `--json` summary), the faults really hit (failed
 * attempts recorded, their echoed key masked), the failing paths really failed the way
 * meant, and the logs really were written at the talkative levels (and only at the level
 * asked).
 *
 * s3rver accepts any secret with its access key id `S3RVER`: it does not check SigV4
 * signatures (the AWS SDK signs V4), so the secret here can be distinctive.
 */
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sql } from 'kysely';
import pino from 'pino';
import { afterAll, beforeAll, describe, it, type ExpectStatic } from 'vitest';
import { openDatabase, type DatabaseConfig } from '../../src/db/database.js';
import { startFakeGeminiServer, type FakeBehavior, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { createScratchDatabase, TEST_DATABASE_URL, type ScratchDatabase } from '../support/databases.js';
import { startS3Server, type TestS3Server } from '../support/s3-server.js';
import { cliEntry, runCli, type CliResult } from '../support/cli.js';
import { closedPort } from '../support/closed-port.js';

// ---------------------------------------------------------------------------------------
// The secrets, distinctive so that a piece of one cannot be anything else.

const API_KEY = 'AIzaSySweep-KEY_0123456789abcdefghijkl';
const S3_SECRET = 's3-SECRET-sweep-9a8b7c6d5e4f3a2b1c0d';
const DB_PASSWORD = 'db-PASSWORD-sweep-5f4e3d2c';
/** Pieces this long or longer count as a leak (the masking's own threshold, MIN_SECRET_FRAGMENT). */
const PIECE = 8;

interface Secret {
  readonly name: string;
  readonly value: string;
  /** Match in any letter case (the API key: servers echo it upper-cased; the mask covers every case). */
  readonly anyCase: boolean;
}
const KEY_SECRET: Secret = { name: 'GEMINI_API_KEY', value: API_KEY, anyCase: true };
const S3_SECRET_SECRET: Secret = { name: 'S3_SECRET_ACCESS_KEY', value: S3_SECRET, anyCase: false };
const DB_SECRET: Secret = { name: 'DATABASE_URL password', value: DB_PASSWORD, anyCase: false };

/** The pieces of `secret` (raw or URL-encoded) of {@link PIECE} characters that `text` shows. */
function leaks(text: string, secret: Secret): string[] {
  const fold = (s: string) => (secret.anyCase ? s.toLowerCase() : s);
  const haystack = fold(text);
  const found = new Set<string>();
  for (const form of new Set([secret.value, encodeURIComponent(secret.value)])) {
    for (let i = 0; i + PIECE <= form.length; i++) {
      const piece = form.slice(i, i + PIECE);
      if (haystack.includes(fold(piece))) found.add(piece);
    }
  }
  return [...found];
}

/** A text some process printed or some row held, and where it came from. */
interface Seen {
  readonly where: string;
  readonly text: string;
}

/** Every leak in `seen`: where, which secret, the pieces, and the lines that show them. */
function leaksIn(seen: readonly Seen[]) {
  const found: { where: string; secret: string; pieces: string[]; lines: string[] }[] = [];
  for (const { where, text } of seen) {
    // Every secret is looked for in every text, whether or not that process had it.
    for (const secret of [KEY_SECRET, S3_SECRET_SECRET, DB_SECRET]) {
      const pieces = leaks(text, secret);
      if (pieces.length === 0) continue;
      const lines = text.split('\n').filter((line) => leaks(line, secret).length > 0).map((line) => line.slice(0, 600));
      found.push({ where, secret: secret.name, pieces, lines });
    }
  }
  return found;
}

// ---------------------------------------------------------------------------------------
// Levels, jobs and the fake provider.

/** The values `IMAGEGEN_LOG_LEVEL` accepts, computed as `loadConfig` does. */
const LEVELS: readonly string[] = [...Object.keys(pino.levels.values), 'silent'];
/** pino's number of each level; `silent` is above all of them. */
const LEVEL_NUMBER: Readonly<Record<string, number>> = { ...pino.levels.values, silent: Number.POSITIVE_INFINITY };

/** Hang guards only (a loaded machine makes a PGlite process slow, never stuck): per process, per leg. */
const HANG_GUARD_MS = 120_000;
const LEG_TIMEOUT_MS = 300_000;

const QUANTITY = 3;
const USER = 'sweep-user';

/**
 * Every other call fails: 503 and 500 with a message that echoes the key the client sent
 * (`{key}`), and a 429 with a 50 ms RetryInfo. With 3 slots, one attempt in flight per
 * slot, that is exactly 6 calls: 3 failures, 3 images.
 */
const CYCLE: readonly FakeBehavior[] = [
  { status: 503, message: 'model overloaded for key {key}, try again' },
  'image',
  { status: 500, message: 'internal error while serving {key}' },
  'image',
  { status: 429, retryDelay: '0.05s', retryAfter: null, message: 'quota exceeded' },
  'image',
];
const FAILURES = CYCLE.filter((b) => b !== 'image').length;
/** The failures whose message echoes the key. */
const ECHOES = CYCLE.filter((b) => typeof b === 'object' && b.message?.includes('{key}')).length;

async function startProvider(): Promise<FakeGeminiServer> {
  return startFakeGeminiServer({ apiKey: API_KEY, latencyMs: 5, behavior: ({ n }) => CYCLE[(n - 1) % CYCLE.length] ?? 'image' });
}


/** `url` with `password` set (PostgreSQL trusts local connections here: any password connects). */
function withPassword(url: string, password: string): string {
  const u = new URL(url);
  u.password = password;
  return u.toString();
}

/** Waits for every promise (no process is left running when one fails), then throws the first failure. */
async function allOrFirstFailure<T>(promises: readonly Promise<T>[]): Promise<T[]> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** Every row of every table of the database, as JSON text (bigints as strings). */
async function everyRow(config: DatabaseConfig): Promise<{ table: string; text: string }[]> {
  const database = await openDatabase(config);
  try {
    const { rows: tables } = await sql<{ name: string }>`
      select table_name as name from information_schema.tables
      where table_schema = current_schema() and table_type = 'BASE TABLE' order by 1`.execute(database.db);
    const out: { table: string; text: string }[] = [];
    for (const { name } of tables) {
      const { rows } = await sql<Record<string, unknown>>`select * from ${sql.table(name)}`.execute(database.db);
      for (const [i, row] of rows.entries()) out.push({ table: `${name} #${i}`, text: JSON.stringify(row, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) });
    }
    return out;
  } finally {
    await database.close();
  }
}

interface Summary {
  jobId: string;
  status: string;
  totalImages: number;
  deliveredImages: number;
  stages: { delivered: number; shortfall: unknown }[];
  attempts: { total: number; failed: number; abandoned: number; byClass: Record<string, number> };
}

/** stdout of a `--json` command: exactly one JSON object. */
function jsonOf<T>(result: CliResult, what: string): T {
  const lines = result.stdout.split('\n').filter((l) => l !== '');
  if (lines.length !== 1) throw new Error(`${what}: stdout must be one JSON object, got ${lines.length} line(s)\nstdout: ${result.stdout.slice(0, 800)}\nstderr: ${result.stderr.slice(-1500)}`);
  return JSON.parse(lines[0]!) as T;
}

/** The pino lines (JSON with a numeric `level`) of a stderr. */
function logLines(stderr: string): { level: number; msg?: string }[] {
  const out: { level: number; msg?: string }[] = [];
  for (const line of stderr.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const value = JSON.parse(line) as { level?: unknown; msg?: unknown };
      if (typeof value.level === 'number') out.push({ level: value.level, ...(typeof value.msg === 'string' ? { msg: value.msg } : {}) });
    } catch {
      // not a log line
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------

describe('secret sweep: no secret in CLI output or the database, at every log level', { concurrent: true }, () => {
  let s3: TestS3Server;
  let root: string;
  const cleanups: (() => Promise<void>)[] = [];

  /** Environment shared by every process; `level` and the database vary. */
  function baseEnv(level: string, server: FakeGeminiServer | undefined, s3Endpoint = s3.endpoint): Record<string, string> {
    return {
      IMAGEGEN_LOG_LEVEL: level,
      IMAGEGEN_PROVIDER: 'gemini',
      GEMINI_API_KEY: API_KEY,
      GEMINI_BASE_URL: server?.url ?? 'http://127.0.0.1:9',
      GEMINI_TIMEOUT_MS: '8000',
      IMAGEGEN_ATTEMPT_TIMEOUT_MS: '8000',
      IMAGEGEN_BACKOFF_BASE_MS: '5',
      IMAGEGEN_BACKOFF_MAX_MS: '50',
      IMAGEGEN_PROGRESS_INTERVAL_MS: '20',
      S3_BUCKET: 'sweep',
      S3_ENDPOINT: s3Endpoint,
      S3_REGION: s3.region,
      S3_FORCE_PATH_STYLE: 'true',
      S3_ACCESS_KEY_ID: s3.credentials.accessKeyId,
      S3_SECRET_ACCESS_KEY: S3_SECRET,
    };
  }

  /** Writes a job file (1 stage x QUANTITY, input image `in.png` of `root`) and returns its path. */
  async function jobFile(jobId: string): Promise<string> {
    const path = join(root, `${jobId}.json`);
    await writeFile(path, JSON.stringify({ jobId, userId: USER, productionId: 'sweep', stages: [{ quantity: QUANTITY, prompt: `sweep ${jobId}`, 'aspect-ratio': '1:1', inputImage: 'in.png' }] }));
    return path;
  }

  beforeAll(async () => {
    // Compiling the CLI (first suite of a source state only) is not part of any leg.
    await cliEntry();
    s3 = await startS3Server({ buckets: ['sweep'] });
    cleanups.push(() => s3.close());
    root = await mkdtemp(join(tmpdir(), 'imagegen-secretsw-'));
    cleanups.push(() => rm(root, { recursive: true, force: true }));
    await writeFile(join(root, 'in.png'), await renderStampedPng({ stamp: 0x5ee9, width: 48, height: 48 }));
  }, 120_000);

  afterAll(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('leaks() finds every piece of 8+ characters, and only those', ({ expect }) => {
    expect(leaks(`x${API_KEY.slice(5, 13).toUpperCase()}y`, KEY_SECRET)).toEqual([API_KEY.slice(5, 13)]);
    expect(leaks(`x${DB_PASSWORD.slice(10, 18)}y`, DB_SECRET)).toEqual([DB_PASSWORD.slice(10, 18)]);
    expect(leaks(`x${S3_SECRET.slice(0, 7)}y${S3_SECRET.slice(7, 14)}`, S3_SECRET_SECRET)).toEqual([]);
    const found = leaksIn([{ where: 'w', text: `a\nb ${S3_SECRET}\nc` }]);
    expect(found.map((f) => [f.where, f.secret, f.pieces.length, f.lines])).toEqual([['w', 'S3_SECRET_ACCESS_KEY', S3_SECRET.length - PIECE + 1, [`b ${S3_SECRET}`]]]);
    expect(LEVELS).toEqual(expect.arrayContaining(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']));
  });

  /**
   * One level's `run` on the database `databaseEnv` names; returns what it printed and
   * checks that it completed exactly and logged as its level says.
   */
  async function sweepRun(expect: ExpectStatic, leg: string, level: string, databaseEnv: Record<string, string>, jobId: string) {
    const server = await startProvider();
    try {
      const env = { ...baseEnv(level, server), ...databaseEnv };
      const run = await runCli(['run', await jobFile(jobId), '--json'], { env, cwd: root, timeoutMs: HANG_GUARD_MS });
      const what = `${leg} run (${level})`;
      expect(run.code, `${what} exit code; stderr:\n${run.stderr.slice(-2000)}`).toBe(0);
      const summary = jsonOf<Summary>(run, what);
      expect(summary, what).toMatchObject({ jobId, status: 'completed', totalImages: QUANTITY, deliveredImages: QUANTITY, stages: [{ delivered: QUANTITY, shortfall: null }] });
      // The faults really hit: every failing call is a failed attempt, then the slot was refilled.
      expect(summary.attempts, what).toMatchObject({ total: QUANTITY + FAILURES, failed: FAILURES, abandoned: 0 });
      expect(server.calls(), what).toBe(QUANTITY + FAILURES);
      expectLogsOfLevel(expect, what, level, run.stderr);
      return [
        { where: `${what} stdout`, text: run.stdout },
        { where: `${what} stderr`, text: run.stderr },
      ];
    } finally {
      await server.close();
    }
  }

  /** A `run` whose S3 endpoint is a closed port: refused as storage unavailable, nothing generated. */
  async function badS3Run(expect: ExpectStatic, leg: string, level: string, databaseEnv: Record<string, string>, jobId: string) {
    const server = await startProvider();
    try {
      const env = { ...baseEnv(level, server, `http://127.0.0.1:${await closedPort()}`), ...databaseEnv };
      const run = await runCli(['run', await jobFile(jobId), '--json'], { env, cwd: root, timeoutMs: HANG_GUARD_MS });
      const what = `${leg} run with S3 on a closed port (${level})`;
      expect(run.code, `${what}; stderr:\n${run.stderr.slice(-2000)}`).toBe(1);
      expect(jsonOf<{ error: { code: string; message: string } }>(run, what).error, what).toMatchObject({ code: 'unavailable', message: expect.stringContaining('storage') });
      expect(run.stderr, what).toContain('imagegen: storage is unavailable');
      expect(server.calls(), `${what}: no provider call`).toBe(0);
      expectStackOfLevel(expect, what, level, run.stderr);
      return [
        { where: `${what} stdout`, text: run.stdout },
        { where: `${what} stderr`, text: run.stderr },
      ];
    } finally {
      await server.close();
    }
  }

  /** `credits balance` with DATABASE_URL (password included) on a closed port: unavailable, exit 1. */
  async function closedDatabase(expect: ExpectStatic, level: string): Promise<Seen[]> {
    const url = `postgres://sweeper:${DB_PASSWORD}@127.0.0.1:${await closedPort()}/sweep`;
    const env = { ...baseEnv(level, undefined), DATABASE_URL: url };
    const result = await runCli(['credits', 'balance', USER, '--json'], { env, cwd: root, timeoutMs: HANG_GUARD_MS });
    const what = `credits balance with DATABASE_URL on a closed port (${level})`;
    expect(result.code, `${what}; stderr:\n${result.stderr}`).toBe(1);
    expect(jsonOf<{ error: { code: string } }>(result, what).error.code, what).toBe('unavailable');
    expect(result.stderr, what).toMatch(/database .* is unavailable/);
    expectStackOfLevel(expect, what, level, result.stderr);
    return [
      { where: `${what} stdout`, text: result.stdout },
      { where: `${what} stderr`, text: result.stderr },
    ];
  }

  /** An error's stack is printed at debug and trace (the talkative path really ran), and only there. */
  function expectStackOfLevel(expect: ExpectStatic, what: string, level: string, stderr: string): void {
    if (LEVEL_NUMBER[level]! <= LEVEL_NUMBER['debug']!) expect(stderr, `${what}: a stack at ${level}`).toMatch(/\n\s+at /);
    else expect(stderr, `${what}: no stack at ${level}`).not.toMatch(/\n\s+at /);
  }

  /** The pino lines of a run: present at the talkative levels, never below the level asked. */
  function expectLogsOfLevel(expect: ExpectStatic, what: string, level: string, stderr: string): void {
    const lines = logLines(stderr);
    const threshold = LEVEL_NUMBER[level]!;
    expect(lines.filter((l) => l.level < threshold), `${what}: no log line below ${level}`).toEqual([]);
    const messages = lines.map((l) => l.msg);
    if (threshold <= LEVEL_NUMBER['info']!) expect(messages, `${what}: info lines`).toEqual(expect.arrayContaining(['job submitted', 'job finished']));
    if (threshold <= LEVEL_NUMBER['debug']!) {
      expect(messages.filter((m) => m === 'attempt failed'), `${what}: one debug line per failed attempt`).toHaveLength(FAILURES);
    }
  }

  function expectNoLeak(expect: ExpectStatic, seen: readonly Seen[]): void {
    expect(seen.length).toBeGreaterThan(0);
    expect(leaksIn(seen)).toEqual([]);
  }

  /** The failed attempts recorded their messages, the echoed key masked. */
  function expectMaskedEchoes(expect: ExpectStatic, rows: readonly { table: string; text: string }[], jobIds: readonly string[]): void {
    for (const jobId of jobIds) {
      const failed = rows.filter((r) => r.table.startsWith('attempts ') && r.text.includes(`"${jobId}"`) && r.text.includes('"failed"'));
      expect(failed, `${jobId}: failed attempts recorded`).toHaveLength(FAILURES);
      expect(failed.filter((r) => r.text.includes('***')), `${jobId}: every echo of the key is recorded masked`).toHaveLength(ECHOES);
    }
  }

  /**
   * CPU is what this file costs (two cores): a CLI process takes ~2.5 s of it on
   * PostgreSQL, ~5 s on PGlite (booting the embedded database). So: the cheap failing path
   * (`credits balance`, closed port) at every level; the bad-S3 `run` at trace and info on
   * PostgreSQL (with and without the stack: its error line is the same at every level), at
   * trace only on PGlite. With PostgreSQL, that leg sweeps every level and the PGlite leg
   * the most talkative one; without it, the PGlite leg sweeps every level, in two data
   * folders side by side.
   */
  const pgliteLevels = TEST_DATABASE_URL ? ['trace'] : LEVELS;
  const pgliteBadS3Levels = TEST_DATABASE_URL ? [] : ['trace'];
  const postgresBadS3Levels = ['trace', 'info'];
  const pgliteChains = TEST_DATABASE_URL ? 1 : 2;

  it(`PGlite: run (S3 storage, failing Gemini calls)${TEST_DATABASE_URL ? '' : ' and the failing paths'} at ${pgliteLevels.join(', ')}: no secret printed or stored`, { timeout: LEG_TIMEOUT_MS }, async ({ expect }) => {
    const started = Date.now();
    // Reaching no PostgreSQL needs none: here when the PostgreSQL leg does not run (cheap: alongside the rest).
    const closed = TEST_DATABASE_URL ? Promise.resolve([]) : Promise.all(LEVELS.map((level) => closedDatabase(expect, level)));
    closed.catch(() => {}); // awaited below; not an unhandled rejection if the chains fail first
    // One grant, at the most talkative level; each chain of levels then starts from a copy of its data folder.
    const template = join(root, 'pglite-template');
    const grant = await runCli(['credits', 'grant', USER, '100', '--json'], { env: { ...baseEnv('trace', undefined), IMAGEGEN_DATA_DIR: template }, cwd: root, timeoutMs: HANG_GUARD_MS });
    expect(grant.code, grant.stderr).toBe(0);
    const seen: Seen[] = [
      { where: 'PGlite credits grant (trace) stdout', text: grant.stdout },
      { where: 'PGlite credits grant (trace) stderr', text: grant.stderr },
    ];
    const chains = Array.from({ length: pgliteChains }, (_, c) => pgliteLevels.filter((_, i) => i % pgliteChains === c)).filter((levels) => levels.length > 0);
    const perChain = await allOrFirstFailure(
      chains.map(async (levels, c) => {
        const dataDir = join(root, `pglite-${c}`);
        await cp(template, dataDir, { recursive: true });
        const databaseEnv = { IMAGEGEN_DATA_DIR: dataDir };
        const out: Seen[] = [];
        const jobIds: string[] = [];
        for (const level of levels) {
          const jobId = `sw-pglite-${level}`;
          jobIds.push(jobId);
          out.push(...(await sweepRun(expect, 'PGlite', level, databaseEnv, jobId)));
          if (pgliteBadS3Levels.includes(level)) out.push(...(await badS3Run(expect, 'PGlite', level, databaseEnv, `sw-pglite-bads3-${level}`)));
        }
        const rows = await everyRow({ dataDir: join(dataDir, 'db') });
        expectMaskedEchoes(expect, rows, jobIds);
        out.push(...rows.map((r) => ({ where: `PGlite (${levels.join(', ')}) table ${r.table}`, text: r.text })));
        return out;
      }),
    );
    seen.push(...perChain.flat(), ...(await closed).flat());
    expectNoLeak(expect, seen);
    console.info(`[secret sweep] PGlite leg: ${pgliteLevels.length} levels, ${seen.length} texts swept in ${Date.now() - started} ms`);
  });

  it.skipIf(!TEST_DATABASE_URL)(
    `PostgreSQL, password in DATABASE_URL: run, credits grant and the failing paths, every level: no secret printed or stored${TEST_DATABASE_URL ? '' : ' (skipped: DATABASE_URL not set)'}`,
    { timeout: LEG_TIMEOUT_MS },
    async ({ expect }) => {
      const started = Date.now();
      const scratch: ScratchDatabase = await createScratchDatabase('postgres');
      try {
        const databaseUrl = withPassword(scratch.config.databaseUrl ?? '', DB_PASSWORD);
        const databaseEnv = { DATABASE_URL: databaseUrl };
        const seen: Seen[] = [];
        const grant = await runCli(['credits', 'grant', USER, String(100 * LEVELS.length), '--json'], { env: { ...baseEnv('trace', undefined), ...databaseEnv }, cwd: root, timeoutMs: HANG_GUARD_MS });
        expect(grant.code, grant.stderr).toBe(0);
        seen.push({ where: 'PostgreSQL credits grant (trace) stdout', text: grant.stdout }, { where: 'PostgreSQL credits grant (trace) stderr', text: grant.stderr });
        const jobIds = LEVELS.map((level) => `sw-pg-${level}`);
        const perLevel = await allOrFirstFailure(
          LEVELS.map(async (level, i) => [
            ...(await sweepRun(expect, 'PostgreSQL', level, databaseEnv, jobIds[i]!)),
            ...(postgresBadS3Levels.includes(level) ? await badS3Run(expect, 'PostgreSQL', level, databaseEnv, `sw-pg-bads3-${level}`) : []),
            ...(await closedDatabase(expect, level)),
          ]),
        );
        seen.push(...perLevel.flat());
        const rows = await everyRow({ databaseUrl });
        expectMaskedEchoes(expect, rows, jobIds);
        seen.push(...rows.map((r) => ({ where: `PostgreSQL table ${r.table}`, text: r.text })));
        expectNoLeak(expect, seen);
        console.info(`[secret sweep] PostgreSQL leg: ${LEVELS.length} levels, ${seen.length} texts swept in ${Date.now() - started} ms`);
      } finally {
        await scratch.dispose();
      }
    },
  );
});
