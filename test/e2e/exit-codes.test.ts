/**
 * Exit codes of `imagegen run`: 1 ended short (with the honest reason per stage),
 * 2 invalid input (nothing written, no provider call), 3 not enough credits
 * (nothing generated, no provider call); and of any command, never a silent 0 for a
 * command that could not answer.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { FakeBehaviorFn } from '../support/fake-gemini-server.js';
import { openCliSuite, type CliSuite } from '../support/cli-suite.js';
import { generatedFiles, jobSpec, parseSingleJson, pgliteOf, readDb, type Summary } from '../support/cli-workspace.js';

/** Prompt of the request a call carries (the fake server records it). */
function promptOf(body: unknown): string {
  const b = body as { contents?: { parts?: { text?: string }[] }[] };
  return (b.contents ?? []).flatMap((c) => c.parts ?? []).map((p) => p.text ?? '').join('\n');
}

describe('imagegen run exit codes', () => {
  const suites: CliSuite[] = [];
  afterEach(async () => {
    for (const suite of suites.splice(0).reverse()) await suite.close();
  });

  /** A workspace and a fake server answering with `behavior` (default: always an image), closed after the test. */
  async function setup(behavior?: FakeBehaviorFn, env: Record<string, string> = {}): Promise<CliSuite> {
    const suite = await openCliSuite({ server: { latencyMs: 5, ...(behavior ? { behavior } : {}) }, env });
    suites.push(suite);
    return suite;
  }

  it('exit 1 (partial): a blocked prompt ends its stage short as non_retryable, an always-503 stage as budget_exhausted, the good stage completes; only delivered images are charged', { timeout: 120_000 }, async () => {
    const { ws, server, run: cli, grant } = await setup(
      ({ body }) => {
        const prompt = promptOf(body);
        if (prompt.includes('FORBIDDEN')) return 'prompt_blocked';
        if (prompt.includes('OVERLOADED')) return 'status:503';
        return 'image';
      },
      { IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '2' },
    );
    const user = 'user-short';
    await grant(user, 20);
    const job = await ws.writeJob('job.json', jobSpec('e2e-short', user, [['a calm lake', 3], ['FORBIDDEN thing', 2], ['OVERLOADED server', 2]]));

    const run = await cli(['run', job, '--json']);
    expect(run.code, run.stderr).toBe(1);
    const summary = parseSingleJson<Summary>(run.stdout);
    expect(summary).toMatchObject({ jobId: 'e2e-short', status: 'partial', totalImages: 7, deliveredImages: 3 });
    const [good, blocked, overloaded] = summary.stages;
    expect(good).toMatchObject({ index: 0, quantity: 3, delivered: 3, shortfall: null });
    expect(blocked).toMatchObject({ index: 1, quantity: 2, delivered: 0, shortfall: { count: 2, reason: 'non_retryable', errorClass: 'prompt_blocked' } });
    expect(overloaded).toMatchObject({ index: 2, quantity: 2, delivered: 0, shortfall: { count: 2, reason: 'budget_exhausted', errorClass: 'overloaded' } });
    expect(summary.attachIds).toEqual(good?.attachIds);

    // The blocked prompt is not retried: at most one call per slot; the 503 stage spends exactly its budget (2 slots x 2 attempts).
    const calls = (word: string) => server.requests.filter((r) => (r.prompt ?? '').includes(word)).length;
    expect(calls('FORBIDDEN')).toBeGreaterThanOrEqual(1);
    expect(calls('FORBIDDEN')).toBeLessThanOrEqual(2);
    expect(calls('OVERLOADED')).toBe(4);
    expect(summary.attempts.byClass['overloaded']).toBe(4);

    expect(summary.credits).toEqual({ reserved: 7, captured: 3, released: 4 });
    const balance = parseSingleJson<{ balance: number; reserved: number }>((await cli(['credits', 'balance', user, '--json'])).stdout);
    expect(balance).toEqual({ userId: user, balance: 17, reserved: 0 });
    expect(await generatedFiles(join(ws.dataDir, 'storage'), 'e2e-short')).toHaveLength(3);
    expect(run.stderr).toMatch(/stage 1: 0\/2 .*short/);
  });

  it('exit 2: bad JSON, a bad spec, a missing input image file and an unknown input attachment each name their field and rule, write nothing and call no provider', { timeout: 120_000 }, async () => {
    const { ws, server, run: cli, grant } = await setup();
    const user = 'user-invalid';
    await grant(user, 100);

    // Each refusal names exactly one field and the rule it broke: `--json` prints the error object on stdout,
    // stderr says `imagegen: ... <field>: <rule>`. (The JSON parser's own wording is V8's, so only its prefix is fixed.)
    const cases: { name: string; content: unknown; field: string; rule: string | RegExp }[] = [
      { name: 'bad-json.json', content: '{"jobId": "e2e-bad-json", "userId": ', field: '(file)', rule: /^is not valid JSON: \S.*$/ },
      {
        name: 'bad-spec.json',
        content: { jobId: 'e2e-bad-spec', userId: user, stages: [{ prompt: 'ok', quantity: 2, inputImage: 'input.png' }, { prompt: 'x', quantity: -3, inputImage: 'input.png' }] },
        field: 'stages[1].quantity',
        rule: 'must be a positive integer, got number -3',
      },
      {
        name: 'missing-image.json',
        content: { jobId: 'e2e-missing-image', userId: user, stages: [{ prompt: 'ok', quantity: 2, inputImage: 'no-such-file.png' }] },
        field: 'stages[0].inputImage',
        rule: 'no-such-file.png: file not found',
      },
      {
        name: 'unknown-attach.json',
        content: { jobId: 'e2e-unknown-attach', userId: user, stages: [{ prompt: 'ok', quantity: 2, mergedImageAttachId: 'no-such-attachment' }] },
        field: 'stages[0].mergedImageAttachId',
        rule: 'attachment no-such-attachment does not exist',
      },
    ];
    for (const c of cases) {
      const file = await ws.writeJob(c.name, c.content);
      const run = await cli(['run', file, '--json']);
      expect(run.code, `${c.name}: ${run.stderr}`).toBe(2);
      const { error } = parseSingleJson<{ error: { code: string; message: string; problems: { field: string; rule: string; message: string }[] } }>(run.stdout);
      expect(error.code, c.name).toBe('invalid_input');
      expect(error.problems, c.name).toHaveLength(1);
      const [problem] = error.problems;
      expect(problem?.field, c.name).toBe(c.field);
      if (typeof c.rule === 'string') expect(problem?.rule, c.name).toBe(c.rule);
      else expect(problem?.rule, c.name).toMatch(c.rule);
      expect(problem?.message, c.name).toBe(`${c.field}: ${problem?.rule}`);
      // stderr: one `imagegen:` message naming the same field and rule.
      expect(run.stderr, c.name).toMatch(/^imagegen: /);
      expect(run.stderr, c.name).toContain(`${c.field}: ${problem?.rule}`);
    }
    // A missing job file is invalid input too.
    const missing = await cli(['run', join(ws.root, 'nope.json')]);
    expect(missing.code, missing.stderr).toBe(2);
    expect(missing.stderr).toContain(`(file): cannot read ${join(ws.root, 'nope.json')}: ENOENT`);

    expect(server.calls()).toBe(0);
    // No object written: not even an imported input image.
    expect(existsSync(join(ws.dataDir, 'storage', 'generated'))).toBe(false);
    expect(existsSync(join(ws.dataDir, 'storage', 'inputs'))).toBe(false);
    // `status` of a refused job: not found (exit 2).
    const status = await cli(['status', 'e2e-bad-spec', '--json']);
    expect(status.code).toBe(2);
    expect(parseSingleJson<{ error: { code: string; problems: { field: string; rule: string }[] } }>(status.stdout).error).toMatchObject({
      code: 'invalid_input',
      problems: [{ field: '<jobId>', rule: 'job e2e-bad-spec does not exist' }],
    });
    expect(status.stderr).toContain('job e2e-bad-spec does not exist');
    // Nothing in the database but the grant: no job, no attachment, no reservation, no attempt.
    const view = await readDb(pgliteOf(ws.dataDir), 'e2e-bad-spec', user);
    expect(view.totals).toEqual({ jobs: 0, attachments: 0, nonGrantLedger: 0, attempts: 0 });
    expect(view.balance).toEqual({ balance: 100, reserved: 0 });
  });

  it('exit 3: a job the user cannot pay for generates nothing, reserves nothing and calls no provider', { timeout: 120_000 }, async () => {
    const { ws, server, run: cli, grant } = await setup();
    const user = 'user-poor';
    await grant(user, 4);
    const job = await ws.writeJob('job.json', jobSpec('e2e-poor', user, [['a', 3], ['b', 2]]));
    const run = await cli(['run', job, '--json']);
    expect(run.code, run.stderr).toBe(3);
    expect(parseSingleJson<{ error: { code: string; problems: { field: string; rule: string }[] } }>(run.stdout).error).toMatchObject({
      code: 'insufficient_credits',
      problems: [{ field: 'credits', rule: `user ${user} needs 5 credits, has 4` }],
    });
    expect(run.stderr).toContain(`imagegen: not enough credits: user ${user} needs 5 credits for this job but has 4 available`);
    expect(server.calls()).toBe(0);
    expect(await generatedFiles(join(ws.dataDir, 'storage'), 'e2e-poor')).toEqual([]);
    expect(existsSync(join(ws.dataDir, 'storage', 'inputs')), 'the input image is not imported for a refused job').toBe(false);
    const view = await readDb(pgliteOf(ws.dataDir), 'e2e-poor', user);
    expect(view.balance).toEqual({ balance: 4, reserved: 0 });
    expect(view.totals).toEqual({ jobs: 0, attachments: 0, nonGrantLedger: 0, attempts: 0 });
  });

  it('never a silent exit 0: a command left waiting with nothing that could end its wait exits 1 as an internal error (with --json, the one error object)', { timeout: 120_000 }, async () => {
    const { ws, run: cli, grant, env } = await setup();
    await grant('user-lost', 3);
    // A preload that loses every statement sent to the database's thread and lets the process
    // go (the thread unref'd): the command waits for an answer that cannot come, and Node,
    // with nothing left to run, ends the process. (What a lost answer did before, silently.)
    const preload = join(ws.root, 'lose-statements.mjs');
    writeFileSync(
      preload,
      [
        "import { Worker } from 'node:worker_threads';",
        'const post = Worker.prototype.postMessage;',
        "Worker.prototype.postMessage = function (message, transfer) { if (message?.op === 'query') { this.unref(); return; } return post.call(this, message, transfer); };",
      ].join('\n'),
    );
    const lost = { NODE_OPTIONS: `--import=${pathToFileURL(preload).href}`, IMAGEGEN_PGLITE_THREAD: 'on' };
    const json = await cli(['credits', 'balance', 'user-lost', '--json'], { env: { ...env, ...lost } });
    expect({ code: json.code, error: parseSingleJson<{ error: { code: string; message: string } }>(json.stdout).error.code }, json.stderr).toEqual({ code: 1, error: 'internal' });
    expect(json.stderr).toContain('imagegen: internal error: the command ended before it answered');
    const text = await cli(['credits', 'balance', 'user-lost'], { env: { ...env, ...lost } });
    expect({ code: text.code, stdout: text.stdout }).toEqual({ code: 1, stdout: '' });
    expect(text.stderr).toContain('the command ended before it answered');
    // The same command with nothing lost answers (the preload alone changes nothing else).
    const fine = await cli(['credits', 'balance', 'user-lost', '--json'], { env: { ...env, IMAGEGEN_PGLITE_THREAD: 'on' } });
    expect({ code: fine.code, answer: parseSingleJson(fine.stdout) }).toEqual({ code: 0, answer: { userId: 'user-lost', balance: 3, reserved: 0 } });
  });
});
