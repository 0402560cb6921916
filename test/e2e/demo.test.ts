/**
 * `npm run demo` (`node dist/demo.js`, here the build of `src/`) as a user runs it on a
 * new data folder: credits granted, a 3 x 8 job run offline with injected failures, every
 * image on disk, the money exact, exit 0.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { cliEntry, REPO_ROOT } from '../support/cli.js';
import { pgliteOf, readDb } from '../support/cli-workspace.js';

const made: string[] = [];
afterAll(() => Promise.all(made.map((dir) => rm(dir, { recursive: true, force: true }))));

function runDemo(entry: string, env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [entry], { cwd: REPO_ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const killer = setTimeout(() => child.kill('SIGKILL'), 120_000);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(killer);
      resolve({ code, stdout, stderr });
    });
  });
}

it('grants the demo credits, delivers 24 of 24 images through retries, captures 24 credits and exits 0', { timeout: 180_000 }, async () => {
  const root = await mkdtemp(join(tmpdir(), 'imagegen-demo-'));
  made.push(root);
  const dataDir = join(root, 'data');
  const entry = join(dirname(await cliEntry({ built: false })), 'demo.js');
  const demo = await runDemo(entry, {
    PATH: process.env['PATH'] ?? '',
    HOME: process.env['HOME'] ?? '',
    IMAGEGEN_DATA_DIR: dataDir,
    IMAGEGEN_LOG_LEVEL: 'warn',
    // The demo's 20% injected failures leave a slot out of its default budget now and then
    // (the README says so); variables set here win over the demo's presets, and this test is
    // about the demo running end to end, not about the budget (tested on its own).
    IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '30',
    IMAGEGEN_MAX_REPLACEMENTS_PER_STAGE: '200',
  });
  expect(demo.code, demo.stderr).toBe(0);

  const jobId = /^job (demo-\d{14}): completed, 24\/24 images$/m.exec(demo.stdout)?.[1];
  expect(jobId, demo.stdout).toBeDefined();
  expect(demo.stdout).toContain('granted 24 credits to demo-user; balance 24');
  for (const stage of [0, 1, 2]) expect(demo.stdout).toContain(`  stage ${stage}: 8/8`);
  expect(demo.stdout).toContain('credits: reserved 24, captured 24, released 0');
  expect(demo.stderr).toContain(`demo: job file ${join(dataDir, 'demo', `${jobId}.json`)}`);

  // Every image where the demo said, each slot once; the money and the rows agree.
  const imagesDir = join(dataDir, 'storage', 'generated', jobId!);
  const files = (await readdir(imagesDir, { recursive: true })).filter((name) => name.endsWith('.webp'));
  expect(files).toHaveLength(24);
  const db = await readDb(pgliteOf(dataDir), jobId!, 'demo-user');
  expect(db.attachments).toHaveLength(24);
  expect(new Set(db.attachments.map((a) => `${a.stage}/${a.slot}`)).size).toBe(24);
  expect(db.ledger.filter((row) => row.kind === 'capture')).toHaveLength(24);
  expect(db.balance).toEqual({ balance: 0, reserved: 0 });
  // Every attempt is recorded (the seed, and so the count of injected failures, changes per run).
  expect(db.attempts).toBeGreaterThanOrEqual(24);
  expect(db.attempts).toBe(Number(/attempts: (\d+)/.exec(demo.stdout)?.[1]));
});
