/**
 * Edges of the input and of the numbers (issue 9), through the real CLI in a child process:
 *
 * - a job spec with a lone UTF-16 surrogate in any string field is refused (exit 2, the
 *   field named) before anything is written or sent;
 * - a truncated input image (PNG, JPEG, WebP whose headers still look whole) is refused at
 *   import (exit 2), because the whole image is decoded there, not only its header;
 * - a millisecond (or second) setting beyond its documented range is refused (exit 2,
 *   the variable named) instead of overflowing Node's 2^31-1 ms timer limit;
 * - credit amounts and balances past int4 (2^31) up to 2^53-1 are granted, reserved and
 *   captured exactly, on PGlite and PostgreSQL; amounts that are not plain decimal
 *   digits, and grants that would overflow, are refused with exit 2.
 */
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { renderStampedPng } from '../support/stamped-image.js';
import { createScratchDatabase, type ScratchDatabase } from '../support/databases.js';
import { runCli, type CliResult } from '../support/cli.js';
// Quick mode (`npm test`) runs the cases issue 9 names through the CLI process, the credit cases
// on every database kind; FULL (`IMAGEGEN_RELIABILITY_FULL=1`) runs every surrogate and range case.
// Every case is also unit-tested in-process (job-spec, image-codec, config-ranges, credits tests).
import { databaseKinds, FULL } from './support/stack.js';

let root: string;
let server: FakeGeminiServer;
let goodPng: Uint8Array;
let cases = 0;

function geminiEnv(dataDir: string): Record<string, string> {
  return {
    IMAGEGEN_DATA_DIR: dataDir,
    IMAGEGEN_PROVIDER: 'gemini',
    GEMINI_API_KEY: server.apiKey,
    GEMINI_BASE_URL: server.url,
    IMAGEGEN_LOG_LEVEL: 'error',
    IMAGEGEN_BACKOFF_BASE_MS: '5',
  };
}

/** A folder with a valid `in.png`, the job file written into it, and an unused data folder. */
async function caseFolder(job: string | Record<string, unknown>, files: Record<string, Uint8Array> = {}): Promise<{ dir: string; jobPath: string; dataDir: string }> {
  const dir = join(root, `case-${cases++}`);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'in.png'), goodPng);
  for (const [name, bytes] of Object.entries(files)) await writeFile(join(dir, name), bytes);
  const jobPath = join(dir, 'job.json');
  // JSON.stringify writes a lone surrogate as the escape `\ud800`, exactly as a client would send it.
  await writeFile(jobPath, typeof job === 'string' ? job : JSON.stringify(job));
  return { dir, jobPath, dataDir: join(dir, 'data') };
}

const stage = (over: Record<string, unknown> = {}) => ({ quantity: 2, prompt: 'a red fox', 'aspect-ratio': '16:9', inputImage: 'in.png', ...over });
const job = (over: Record<string, unknown> = {}, stageOver: Record<string, unknown> = {}) => ({ userId: 'alice', stages: [stage(stageOver)], ...over });

/** Gives alice credits in `dataDir` (a control job must be able to pay). */
async function grantAlice(dataDir: string, cwd: string): Promise<void> {
  const result = await runCli(['credits', 'grant', 'alice', '10'], { env: geminiEnv(dataDir), cwd });
  expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
}

function expectRefusedUntouched(result: CliResult, dataDir: string, field: string): void {
  expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 2 });
  expect(result.stderr).toContain(field);
  // No stack trace: the refusal is a message, not a crash.
  expect(result.stderr).not.toMatch(/\n\s+at /);
  // Refused before the database or the store were opened: nothing written at all.
  expect(existsSync(dataDir) ? readdirSync(dataDir) : []).toEqual([]);
}

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'imagegen-edges-'));
  server = await startFakeGeminiServer();
  goodPng = await renderStampedPng({ stamp: 9, width: 64, height: 36 });
});

afterAll(async () => {
  await server?.close();
  if (root) await rm(root, { recursive: true, force: true });
});

describe('a lone UTF-16 surrogate in any string of the job spec: exit 2, the field named, nothing written, no provider call', () => {
  const SURROGATE_CASES: readonly { name: string; job: Record<string, unknown>; field: string; quick?: true }[] = [
    { name: 'prompt with a lone high surrogate', job: job({}, { prompt: 'a red fox \ud800' }), field: 'stages[0].prompt', quick: true },
    { name: 'prompt with a lone low surrogate', job: job({}, { prompt: '\udc00 a red fox' }), field: 'stages[0].prompt' },
    { name: 'prompt with a reversed pair', job: job({}, { prompt: 'fox \ude00\ud83d' }), field: 'stages[0].prompt' },
    { name: 'userId', job: job({ userId: 'ali\ud800ce' }), field: 'userId', quick: true },
    { name: 'productionId', job: job({ productionId: 'p-\udfff' }), field: 'productionId', quick: true },
    { name: 'jobId', job: job({ jobId: 'job-\ud800' }), field: 'jobId' },
    { name: 'aspect-ratio', job: job({}, { 'aspect-ratio': '16:9\ud800' }), field: 'stages[0].aspect-ratio' },
    { name: 'mergedImageAttachId', job: job({}, { inputImage: undefined, mergedImageAttachId: 'att-\ud800' }), field: 'stages[0].mergedImageAttachId' },
    { name: 'inputAttachId', job: job({}, { inputImage: undefined, inputAttachId: 'att-\udbff' }), field: 'stages[0].inputAttachId' },
    { name: 'inputImage path', job: job({}, { inputImage: 'in\ud800.png' }), field: 'stages[0].inputImage' },
  ];

  for (const c of SURROGATE_CASES.filter((c) => FULL || c.quick)) {
    it(`${c.name}: refused naming ${c.field}`, async () => {
      const { dir, jobPath, dataDir } = await caseFolder(c.job);
      const calls = server.calls();
      const result = await runCli(['run', jobPath], { env: geminiEnv(dataDir), cwd: dir });
      expectRefusedUntouched(result, dataDir, c.field);
      expect(result.stderr).toMatch(/surrogate/i);
      expect(server.calls()).toBe(calls);
    });
  }

  it('control: a well-formed surrogate pair (an emoji) in the prompt is accepted and the job runs', async () => {
    const { dir, jobPath, dataDir } = await caseFolder(job({}, { quantity: 1, prompt: 'a red fox \ud83e\udd8a' }));
    await grantAlice(dataDir, dir);
    const result = await runCli(['run', jobPath, '--json'], { env: geminiEnv(dataDir), cwd: dir });
    expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
  });
});

describe('a truncated input image: exit 2 at import naming the stage input, nothing written, no provider call', () => {
  let noise: ReturnType<typeof sharp>;
  beforeAll(() => {
    // Seeded noise (xorshift32) compresses badly, so half the file is well inside the pixel data.
    const raw = Buffer.alloc(192 * 128 * 3);
    let x = 7;
    for (let i = 0; i < raw.length; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      raw[i] = x & 0xff;
    }
    noise = sharp(raw, { raw: { width: 192, height: 128, channels: 3 } });
  });

  const half = (bytes: Buffer): Buffer => Buffer.from(bytes.subarray(0, Math.floor(bytes.byteLength / 2)));
  const TRUNCATED: readonly { name: string; file: string; make: () => Promise<Buffer> }[] = [
    { name: 'a PNG cut in half', file: 'cut.png', make: async () => half(await noise.clone().png().toBuffer()) },
    { name: 'a JPEG cut in half', file: 'cut.jpg', make: async () => half(await noise.clone().jpeg().toBuffer()) },
    {
      name: 'a WebP cut in half whose RIFF and VP8 chunk sizes were rewritten to match',
      file: 'cut.webp',
      make: async () => {
        const full = await noise.clone().webp().toBuffer();
        // An even length: RIFF chunks are even-sized, so the header still looks whole.
        const cut = Buffer.from(full.subarray(0, Math.floor(full.byteLength / 4) * 2));
        cut.writeUInt32LE(cut.byteLength - 8, 4); // RIFF size
        cut.writeUInt32LE(cut.byteLength - 20, 16); // VP8 chunk size
        return cut;
      },
    },
  ];

  for (const c of TRUNCATED) {
    it(`${c.name}: refused naming stages[0].inputImage`, async () => {
      const bytes = await c.make();
      // The header alone still reads as a whole image: only a full decode finds the damage.
      const meta = await sharp(bytes, { failOn: 'error' }).metadata();
      expect([meta.width, meta.height]).toEqual([192, 128]);
      const { dir, jobPath, dataDir } = await caseFolder(job({}, { inputImage: c.file }), { [c.file]: bytes });
      const calls = server.calls();
      const result = await runCli(['run', jobPath], { env: geminiEnv(dataDir), cwd: dir });
      expectRefusedUntouched(result, dataDir, 'stages[0].inputImage');
      expect(result.stderr).toContain(c.file);
      expect(server.calls()).toBe(calls);
    });
  }
});

describe('a millisecond or second setting beyond its range: exit 2 naming the variable, nothing written', () => {
  // Node clamps a timer above 2^31-1 ms to 1 ms: such a timeout would fire at once.
  const OVER: readonly [variable: string, value: string][] = [
    ['IMAGEGEN_ATTEMPT_TIMEOUT_MS', '3000000000'],
    ['IMAGEGEN_QUEUE_EXPIRE_SECONDS', '86400'],
    ['GEMINI_TIMEOUT_MS', '2147483648'],
    ['IMAGEGEN_BACKOFF_BASE_MS', '2147483648'],
    ['IMAGEGEN_BACKOFF_MAX_MS', '2147483648'],
    ['IMAGEGEN_OFFLINE_LATENCY_MS', '2147483648'],
    ['IMAGEGEN_OFFLINE_JITTER_MS', '2147483648'],
    ['IMAGEGEN_PROGRESS_INTERVAL_MS', '2147483648'],
    ['IMAGEGEN_SHUTDOWN_GRACE_MS', '2147483648'],
    ['IMAGEGEN_QUEUE_EXPIRE_SECONDS', '2147484'],
  ];

  for (const [variable, value] of OVER.filter((_, i) => FULL || i < 2)) {
    it(`${variable}=${value} is refused`, async () => {
      const { dir, jobPath, dataDir } = await caseFolder(job({}, { quantity: 1 }));
      const calls = server.calls();
      const result = await runCli(['run', jobPath], { env: { ...geminiEnv(dataDir), [variable]: value }, cwd: dir });
      expectRefusedUntouched(result, dataDir, variable);
      expect(server.calls()).toBe(calls);
    });
  }

  it('control: IMAGEGEN_ATTEMPT_TIMEOUT_MS at its documented maximum (3600000) runs the job to completion', async () => {
    const { dir, jobPath, dataDir } = await caseFolder(job({}, { quantity: 2 }));
    await grantAlice(dataDir, dir);
    const calls = server.calls();
    const result = await runCli(['run', jobPath, '--json'], { env: { ...geminiEnv(dataDir), IMAGEGEN_ATTEMPT_TIMEOUT_MS: '3600000' }, cwd: dir });
    expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
    expect(JSON.parse(result.stdout)).toMatchObject({ status: 'completed', deliveredImages: 2, attempts: { failed: 0 } });
    expect(server.calls() - calls).toBe(2);
  });
});

for (const kind of databaseKinds()) {
  describe(`credits beyond int4 through the CLI (${kind})`, () => {
    let scratch: ScratchDatabase;
    let dir: string;
    let dataDir: string;
    const MAX_SAFE = Number.MAX_SAFE_INTEGER; // 2^53 - 1
    const env = (extra: Record<string, string> = {}): Record<string, string> => ({
      IMAGEGEN_DATA_DIR: dataDir,
      IMAGEGEN_PROVIDER: 'offline',
      IMAGEGEN_LOG_LEVEL: 'error',
      ...(scratch.config.databaseUrl ? { DATABASE_URL: scratch.config.databaseUrl } : {}),
      ...extra,
    });
    const cli = (args: readonly string[], extra: Record<string, string> = {}) => runCli(args, { env: env(extra), cwd: dir });
    const balanceOf = async (userId: string): Promise<unknown> => {
      const result = await cli(['credits', 'balance', userId, '--json']);
      expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      return JSON.parse(result.stdout);
    };

    beforeAll(async () => {
      scratch = await createScratchDatabase(kind);
      dir = await mkdtemp(join(root, `credits-${kind}-`));
      dataDir = join(dir, 'data');
      await writeFile(join(dir, 'in.png'), goodPng);
    });
    afterAll(async () => {
      await scratch?.dispose();
    });

    it('grants 2^31 and then 2^31-1 more: balance 2^32-1, no RangeError, no integer out of range', async () => {
      const first = await cli(['credits', 'grant', 'erin', '2147483648', '--json']);
      expect({ code: first.code, stderr: first.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      expect(JSON.parse(first.stdout)).toEqual({ userId: 'erin', balance: 2147483648 });
      const second = await cli(['credits', 'grant', 'erin', '2147483647', '--json']);
      expect({ code: second.code, stderr: second.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      expect(JSON.parse(second.stdout)).toEqual({ userId: 'erin', balance: 4294967295 });
      expect(await balanceOf('erin')).toEqual({ userId: 'erin', balance: 4294967295, reserved: 0 });
    });

    it('grants up to 2^53-1 exactly; one credit more is refused as an overflow (exit 2) and nothing changes', async () => {
      const near = await cli(['credits', 'grant', 'frank', String(MAX_SAFE - 1)]);
      expect({ code: near.code, stderr: near.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      const top = await cli(['credits', 'grant', 'frank', '1', '--json']);
      expect({ code: top.code, stderr: top.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      expect(JSON.parse(top.stdout)).toEqual({ userId: 'frank', balance: MAX_SAFE });
      const over = await cli(['credits', 'grant', 'frank', '1']);
      expect({ code: over.code, stderr: over.stderr.slice(0, 800) }).toMatchObject({ code: 2 });
      expect(over.stderr).toContain('would overflow');
      expect(over.stderr).not.toMatch(/\n\s+at /);
      expect(await balanceOf('frank')).toEqual({ userId: 'frank', balance: MAX_SAFE, reserved: 0 });
    });

    // Each of these was granted before (Number() reads hex, exponents, padding and a plus sign);
    // the full syntax (0, fractions, beyond 2^53-1, other digits) is unit-tested in test/domain/credit-amount.test.ts.
    it('amounts "0x10", "1e3", " 7", "7 ", "+7", "07" are not amounts: each exits 2 naming the amount, nothing granted', async () => {
      for (const amount of ['0x10', '1e3', ' 7', '7 ', '+7', '07']) {
        const result = await cli(['credits', 'grant', 'gina', amount]);
        expect({ amount, code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ amount, code: 2 });
        expect(result.stderr).toContain('amount');
        expect(result.stderr).not.toMatch(/\n\s+at /);
      }
      // One look at the balance after all six (each refusal is a process of its own).
      expect(await balanceOf('gina')).toEqual({ userId: 'gina', balance: 0, reserved: 0 });
    });

    it('a job priced 2^40 per image reserves, captures and releases exactly (3 images, balance above 2^52)', async () => {
      const price = 2 ** 40;
      const granted = 2 ** 52 + 12345;
      const grant = await cli(['credits', 'grant', 'hugo', String(granted)]);
      expect({ code: grant.code, stderr: grant.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      const jobPath = join(dir, 'big-price.json');
      await writeFile(jobPath, JSON.stringify({ jobId: `big-price-${kind}`, userId: 'hugo', stages: [{ quantity: 3, prompt: 'gold', inputImage: 'in.png' }] }));
      const result = await cli(['run', jobPath, '--json'], { IMAGEGEN_PRICE_PER_IMAGE: String(price) });
      expect({ code: result.code, stderr: result.stderr.slice(0, 800) }).toMatchObject({ code: 0 });
      expect(JSON.parse(result.stdout)).toMatchObject({ status: 'completed', deliveredImages: 3, credits: { reserved: 3 * price, captured: 3 * price, released: 0 } });
      expect(await balanceOf('hugo')).toEqual({ userId: 'hugo', balance: granted - 3 * price, reserved: 0 });
    });
  });
}
