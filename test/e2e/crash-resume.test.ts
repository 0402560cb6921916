/**
 * A `run` killed with SIGKILL mid-job and run again with the same job file: the
 * job resumes and ends with exactly the asked images, one attach record and one
 * charge per slot, one reservation, and no orphan objects. Also: the embedded
 * database refuses a second process while the first runs.
 */
import { copyFile, mkdir, readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../support/cli.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { generatedFiles, jobSpec, parseSingleJson, pgliteOf, readDb, stampsOnDisk, type Summary } from '../support/cli-workspace.js';

/**
 * Deliveries the run reported as committed: its progress lines on stderr
 * (`stage 1: 3/8 delivered, ...`, written on `slot:delivered`, after the commit), summed
 * over stages from each stage's latest line. A lower bound of the committed rows.
 */
function committedPerProgress(stderr: string): number {
  const latest = new Map<string, number>();
  for (const m of stderr.matchAll(/^stage (\d+): (\d+)\/\d+ delivered/gm)) latest.set(m[1] as string, Math.max(latest.get(m[1] as string) ?? 0, Number(m[2])));
  return [...latest.values()].reduce((a, b) => a + b, 0);
}

describe('imagegen run: SIGKILL mid-run, then run again', () => {
  const JOB_ID = 'e2e-crash';
  const USER = 'user-crash';
  const TOTAL = 24;
  let suite: CliSuite;
  const FAST_CALLS = 10;
  let stalled = true;

  beforeAll(async () => {
    suite = await openCliSuite({
      // The first FAST_CALLS calls answer quickly; while `stalled`, later calls hang, so the
      // first run is surely still running (with calls in flight) when it is killed.
      server: { latencyMs: ({ n }) => (n <= FAST_CALLS || !stalled ? 150 : 120_000) },
      env: { IMAGEGEN_CONCURRENCY: '4', IMAGEGEN_STAGE_CONCURRENCY: '2' },
      grants: { [USER]: 100 },
    });
  });

  afterAll(() => suite?.close());

  it('resumes to exactly the asked images with no duplicate attach records, charges, reservations or orphan objects; a second process on the embedded DB is refused meanwhile', { timeout: 120_000 }, async () => {
    const jobFile = await suite.ws.writeJob('job.json', jobSpec(JOB_ID, USER, [['one', 8], ['two', 8], ['three', 8]]));
    const storage = join(suite.ws.dataDir, 'storage');
    const first = await suite.start(['run', jobFile, '--json']);
    // Wait until the run reported committed deliveries (its progress lines) and later calls
    // hang (the run is stuck mid-job): the rows are there, not just files stored before the commit.
    await waitFor('committed deliveries of the first run, then calls hanging', () => (suite.server.calls() > FAST_CALLS && committedPerProgress(first.stderr()) >= 1) || first.child.exitCode !== null, 60_000);
    expect(first.child.exitCode, `the first run ended before it could be killed:\n${first.stderr()}`).toBeNull();
    const committedBeforeKill = committedPerProgress(first.stderr());

    // While it runs, a second process on the same data dir is refused with a clear error.
    const second = await suite.run(['status', JOB_ID, '--json']);
    expect(second.code).toBe(1);
    expect(second.stderr).toMatch(/in use by process \d+/);
    expect(second.stderr).toMatch(/DATABASE_URL/);

    expect(first.child.exitCode, 'still running at the kill').toBeNull();
    first.child.kill('SIGKILL');
    const killed = await first.exited;
    expect(killed.signal).toBe('SIGKILL');
    expect(killed.stdout).toBe('');
    const filesAtKill = await generatedFiles(storage, JOB_ID);
    expect(filesAtKill.length).toBeGreaterThan(0);
    expect(filesAtKill.length).toBeLessThan(TOTAL);
    // An upload whose delivery never committed (as a kill between put and commit leaves): resume must remove it.
    const planted = join(storage, 'generated', JOB_ID, '2', '7-99.webp');
    await mkdir(dirname(planted), { recursive: true });
    await copyFile(join(storage, 'generated', JOB_ID, filesAtKill.find((f) => /^\d+\/\d+-\d+\.webp$/.test(f)) as string), planted);
    const callsBeforeResume = suite.server.calls();
    stalled = false;

    const resumed = await suite.run(['run', jobFile, '--json']);
    expect(resumed.code, resumed.stderr).toBe(0);
    // It resumed: it started from what the killed run had committed and called the provider only for the rest.
    const already = /(\d+)\/24 images already delivered/.exec(resumed.stderr);
    expect(already, resumed.stderr).not.toBeNull();
    const deliveredBefore = Number(already?.[1]);
    expect(deliveredBefore).toBeGreaterThanOrEqual(committedBeforeKill);
    expect(deliveredBefore).toBeLessThanOrEqual(FAST_CALLS);
    expect(suite.server.calls() - callsBeforeResume).toBe(TOTAL - deliveredBefore);

    const summary = parseSingleJson<Summary>(resumed.stdout);
    expect(summary).toMatchObject({ jobId: JOB_ID, status: 'completed', totalImages: TOTAL, deliveredImages: TOTAL });
    expect(summary.stages.map((s) => s.delivered)).toEqual([8, 8, 8]);
    expect(new Set(summary.attachIds).size).toBe(TOTAL);
    // Reserved once (not doubled), captured once per delivered image.
    expect(summary.credits).toEqual({ reserved: TOTAL, captured: TOTAL, released: 0 });
    const balance = parseSingleJson((await suite.run(['credits', 'balance', USER, '--json'])).stdout);
    expect(balance).toEqual({ userId: USER, balance: 100 - TOTAL, reserved: 0 });

    // Storage: exactly one object per attach record, every one a distinct served image.
    const onDisk = await generatedFiles(storage, JOB_ID);
    // A write cut by SIGKILL can leave the folder store's temp file (`.tmp-<uuid>`); the
    // resume's sweep (removeIncomplete) must remove it.
    const temps = onDisk.filter((f) => /(^|\/)\.tmp-/.test(f));
    expect(temps, 'temp files left by the killed run').toEqual([]);
    expect(existsSync(planted), 'the planted uncommitted upload was removed').toBe(false);
    const files = onDisk.filter((f) => !temps.includes(f));
    expect(files.filter((f) => !/^\d+\/\d+-\d+\.webp$/.test(f)), 'unexpected files in the job folder').toEqual([]);
    expect(files, `files: ${files.join(' ')}`).toHaveLength(TOTAL);
    const stamps = await stampsOnDisk(storage, JOB_ID);
    expect(new Set(stamps).size).toBe(TOTAL);
    const served = new Set(suite.server.requests.map((r) => r.servedStamp).filter((s) => s !== undefined));
    for (const s of stamps) expect(served.has(s)).toBe(true);
    // Nothing was stored under any other job id.
    expect(existsSync(storage) ? (await readdir(join(storage, 'generated'))).sort() : []).toEqual([JOB_ID]);

    const view = await readDb(pgliteOf(suite.ws.dataDir), JOB_ID, USER);
    expect(view.attachments.map((a) => a.id)).toEqual(summary.attachIds);
    expect(new Set(view.attachments.map((a) => `${a.stage}/${a.slot}`)).size).toBe(TOTAL);
    expect(view.attachments.map((a) => a.storageKey).sort()).toEqual(files.map((f) => `generated/${JOB_ID}/${f}`).sort());
    const byKind = (kind: string) => view.ledger.filter((l) => l.kind === kind);
    expect(byKind('reserve')).toHaveLength(1);
    expect(byKind('capture')).toHaveLength(TOTAL);
    expect(new Set(byKind('capture').map((l) => l.attachId))).toEqual(new Set(summary.attachIds));
  });
});
