/**
 * Runs the real `imagegen` CLI in a child process.
 *
 * The CLI is compiled from the current `src/` into a private folder keyed by a hash
 * of the sources (`node_modules/.cache/imagegen-reliability/<hash>`), so these
 * suites never run a stale `dist/` and never race another build of `dist/`. The
 * first suite to need it compiles (~10 s) under a mkdir lock; the others wait.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../../..');
const CACHE = join(ROOT, 'node_modules', '.cache', 'imagegen-reliability');

function sourceHash(): string {
  const hash = createHash('sha256');
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      else if (name.endsWith('.ts')) hash.update(relative(ROOT, path)).update(readFileSync(path));
    }
  };
  walk(join(ROOT, 'src'));
  hash.update(readFileSync(join(ROOT, 'tsconfig.json')));
  return hash.digest('hex').slice(0, 16);
}

let built: string | undefined;

/** Path of the compiled CLI entry for the current sources (compiling it if needed). */
export async function cliEntry(): Promise<string> {
  if (built) return built;
  // Run the suites against a given build instead (e.g. a candidate fix): IMAGEGEN_RELIABILITY_CLI=/path/cli.js
  const given = process.env['IMAGEGEN_RELIABILITY_CLI'];
  if (given) return (built = resolve(given));
  const dir = join(CACHE, sourceHash());
  const entry = join(dir, 'cli.js');
  const lock = `${dir}.lock`;
  mkdirSync(CACHE, { recursive: true });
  const deadline = Date.now() + 120_000;
  while (!existsSync(entry)) {
    let mine = false;
    try {
      mkdirSync(lock);
      mine = true;
    } catch {
      // Someone else compiles; take over a lock left by a dead build after 90 s.
      try {
        if (Date.now() - statSync(lock).mtimeMs > 90_000) rmSync(lock, { recursive: true, force: true });
      } catch {
        // gone meanwhile
      }
    }
    if (mine) {
      try {
        if (!existsSync(entry)) {
          const tmp = `${dir}.tmp-${process.pid}`;
          rmSync(tmp, { recursive: true, force: true });
          const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
          const out = spawnSync(
            process.execPath,
            [tsc, '-p', join(ROOT, 'tsconfig.build.json'), '--outDir', tmp, '--declaration', 'false', '--declarationMap', 'false', '--sourceMap', 'false', '--noEmitOnError', 'false'],
            { cwd: ROOT, encoding: 'utf8' },
          );
          if (!existsSync(join(tmp, 'cli.js'))) throw new Error(`compiling the CLI failed:\n${out.stdout}\n${out.stderr}`);
          // Outside the package's scope (node_modules), so say it is ESM.
          writeFileSync(join(tmp, 'package.json'), '{"type":"module"}\n');
          rmSync(dir, { recursive: true, force: true });
          renameSync(tmp, dir);
          // Builds of older sources pile up as src changes: drop those untouched for an hour.
          for (const name of readdirSync(CACHE)) {
            const old = join(CACHE, name);
            if (old !== dir && Date.now() - statSync(old).mtimeMs > 3_600_000) rmSync(old, { recursive: true, force: true });
          }
        }
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
    } else {
      if (Date.now() > deadline) throw new Error(`timed out waiting for another process to compile the CLI (${lock})`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  built = entry;
  return entry;
}

export interface CliResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** A running CLI process with its output so far. */
export interface CliProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited and been reaped. */
  readonly exited: Promise<CliResult>;
}

/** Starts `imagegen <args>` with exactly `env` (plus PATH/HOME), cwd `cwd`. */
export async function startCli(args: readonly string[], options: { env: Readonly<Record<string, string>>; cwd: string }): Promise<CliProcess> {
  const entry = await cliEntry();
  const child = spawn(process.execPath, [entry, ...args], {
    cwd: options.cwd,
    env: { PATH: process.env['PATH'] ?? '', HOME: process.env['HOME'] ?? '', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr?.on('data', (c: Buffer) => (err += c.toString('utf8')));
  const exited = new Promise<CliResult>((resolveExit) => {
    child.once('close', (code, signal) => resolveExit({ code, signal, stdout: out, stderr: err }));
  });
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Runs `imagegen <args>` to the end (killed after `timeoutMs`). */
export async function runCli(args: readonly string[], options: { env: Readonly<Record<string, string>>; cwd: string; timeoutMs?: number }): Promise<CliResult> {
  const p = await startCli(args, options);
  const timer = setTimeout(() => p.child.kill('SIGKILL'), options.timeoutMs ?? 60_000);
  try {
    return await p.exited;
  } finally {
    clearTimeout(timer);
  }
}
