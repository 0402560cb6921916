/**
 * `bin/imagegen`, the file npm links as the `imagegen` command: a POSIX sh line that sets
 * glibc's huge-page tunable (unless the caller set GLIBC_TUNABLES, or the command runs jobs:
 * `run`, `worker`, `serve`) and replaces itself with node on the same file, which then
 * imports `dist/cli.js` (BENCHMARKS.md 11L).
 *
 * The first part runs a copy of the real file in a scratch package whose `dist/cli.js` is a
 * stub that reports what it got (its environment's GLIBC_TUNABLES, its arguments, its pid)
 * and exits with the code it is told: reached through a relative symlink, as npm's
 * `node_modules/.bin/imagegen` is. The second part runs the real file on the real build.
 */
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageVersion } from '../../src/cli/invocation.js';
import { cliEntry, REPO_ROOT } from '../support/cli-entry.js';

const BIN = join(REPO_ROOT, 'bin', 'imagegen');
const HUGE_PAGES = 'glibc.malloc.hugetlb=1';

/** What the stub CLI saw. */
interface Seen {
  readonly tunables: string | null;
  readonly args: string[];
  readonly pid: number;
}

const STUB_CLI = `process.stdout.write(JSON.stringify({ tunables: process.env.GLIBC_TUNABLES ?? null, args: process.argv.slice(2), pid: process.pid }));
process.exitCode = Number(process.env.STUB_EXIT ?? 0);
`;

/** An environment without GLIBC_TUNABLES, plus `extra`. */
function envWith(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env = { ...process.env, ...extra };
  if (!('GLIBC_TUNABLES' in extra)) delete env['GLIBC_TUNABLES'];
  return env;
}

describe('bin/imagegen (a copy, on a stub CLI, through an npm-style link)', () => {
  let dir: string;
  let linked: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'imagegen-bin-'));
    const pkg = join(dir, 'node_modules', 'imagegen-pipeline');
    mkdirSync(join(pkg, 'bin'), { recursive: true });
    mkdirSync(join(pkg, 'dist'));
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'imagegen-pipeline', type: 'module' }));
    copyFileSync(BIN, join(pkg, 'bin', 'imagegen'));
    writeFileSync(join(pkg, 'dist', 'cli.js'), STUB_CLI);
    mkdirSync(join(dir, 'node_modules', '.bin'));
    linked = join(dir, 'node_modules', '.bin', 'imagegen');
    symlinkSync('../imagegen-pipeline/bin/imagegen', linked);
  });

  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function run(args: string[], env: NodeJS.ProcessEnv): { seen: Seen; status: number | null } {
    const out = spawnSync(linked, args, { encoding: 'utf8', env });
    expect(out.stderr).toBe('');
    return { seen: JSON.parse(out.stdout) as Seen, status: out.status };
  }

  it('sets the huge-page tunable when the caller set none, and passes every argument through as given', () => {
    const args = ['credits', 'balance', 'a user with spaces', '--json', '"quoted"', '$HOME', '*', ''];
    const { seen, status } = run(args, envWith());
    expect(status).toBe(0);
    expect(seen.tunables).toBe(HUGE_PAGES);
    expect(seen.args).toEqual(args);
  });

  it('leaves the tunable unset for the commands that run jobs (run, worker, serve), and for them too keeps the caller\'s', () => {
    for (const command of ['run', 'worker', 'serve']) {
      const { seen, status } = run([command, 'job.json'], envWith());
      expect(status).toBe(0);
      expect(seen.tunables, command).toBeNull();
      expect(seen.args).toEqual([command, 'job.json']);
      expect(run([command], envWith({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' })).seen.tunables).toBe('glibc.malloc.arena_max=2');
    }
    // Only the command word counts: a job file named like a command is a file.
    expect(run(['status', 'run'], envWith()).seen.tunables).toBe(HUGE_PAGES);
  });

  it('keeps GLIBC_TUNABLES the caller set, an empty one included', () => {
    expect(run([], envWith({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' })).seen.tunables).toBe('glibc.malloc.arena_max=2');
    expect(run([], envWith({ GLIBC_TUNABLES: '' })).seen.tunables).toBe('');
  });

  it("exits with the CLI's exit code", () => {
    for (const code of [1, 2, 3]) expect(run(['x'], envWith({ STUB_EXIT: String(code) })).status).toBe(code);
  });

  it('becomes node in the same process: the CLI runs under the pid the caller started (signals reach it)', async () => {
    const child = spawn(linked, ['status'], { env: envWith(), stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(0);
    expect((JSON.parse(stdout) as Seen).pid).toBe(child.pid);
  });

  it('run as `node bin/imagegen`, it is the same CLI (node reads the sh line as a string and a comment), tunable untouched', () => {
    const out = spawnSync(process.execPath, [linked, 'help'], { encoding: 'utf8', env: envWith() });
    expect(out.status, out.stderr).toBe(0);
    const seen = JSON.parse(out.stdout) as Seen;
    expect(seen.args).toEqual(['help']);
    expect(seen.tunables).toBeNull();
  });
});

describe('bin/imagegen on the build (what `npx imagegen` runs)', () => {
  let cli: string;
  beforeAll(async () => {
    cli = await cliEntry({ built: true });
  });

  it('answers as `node dist/cli.js` does: --help, and an invalid command with exit 2 and the same message', () => {
    for (const args of [['--help'], ['credits', 'balance']]) {
      const viaBin = spawnSync(BIN, args, { encoding: 'utf8', env: envWith() });
      const viaNode = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: envWith() });
      expect(viaBin.status, viaBin.stderr).toBe(viaNode.status);
      expect(viaBin.stdout).toBe(viaNode.stdout);
      expect(viaBin.stderr).toBe(viaNode.stderr);
    }
    expect(spawnSync(BIN, ['credits', 'balance'], { encoding: 'utf8', env: envWith() }).status).toBe(2);
  });

  it('--version (or -v) prints the version in package.json, exit 0; with --json one object; with a command it is exit 2', () => {
    const { version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-v']) {
      const out = spawnSync(BIN, [flag], { encoding: 'utf8', env: envWith() });
      expect({ status: out.status, stdout: out.stdout, stderr: out.stderr }).toEqual({ status: 0, stdout: `${version}\n`, stderr: '' });
    }
    const json = spawnSync(BIN, ['--version', '--json'], { encoding: 'utf8', env: envWith() });
    expect(json.status, json.stderr).toBe(0);
    expect(JSON.parse(json.stdout)).toEqual({ name: 'imagegen-pipeline', version });
    const withCommand = spawnSync(BIN, ['stats', '--version', '--json'], { encoding: 'utf8', env: envWith() });
    expect(withCommand.status).toBe(2);
    expect(JSON.parse(withCommand.stdout)).toMatchObject({ error: { code: 'invalid_input', message: expect.stringContaining('--version') } });
  });
});

describe('packageVersion: the first package.json named imagegen-pipeline at or above the module', () => {
  it('skips a package.json of another name on the way up (the module inside node_modules of a host, or a folder of its own)', () => {
    const root = mkdtempSync(join(tmpdir(), 'imagegen-version-'));
    try {
      const inner = join(root, 'node_modules', 'imagegen-pipeline', 'dist', 'cli-bundle');
      mkdirSync(inner, { recursive: true });
      writeFileSync(join(root, 'package.json'), JSON.stringify({ name: 'the-host', version: '9.9.9' }));
      writeFileSync(join(root, 'node_modules', 'imagegen-pipeline', 'package.json'), JSON.stringify({ name: 'imagegen-pipeline', version: '1.2.3' }));
      writeFileSync(join(root, 'node_modules', 'imagegen-pipeline', 'dist', 'package.json'), JSON.stringify({ type: 'module' }));
      expect(packageVersion(pathToFileURL(join(inner, 'cli.js')).href)).toBe('1.2.3');
      // Outside any copy of the package: it says so.
      expect(() => packageVersion(pathToFileURL(join(root, 'x.js')).href)).toThrow('no package.json of imagegen-pipeline above');
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
