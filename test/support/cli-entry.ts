/**
 * Which `imagegen` CLI build the test harness runs (`cliEntry`), and the guarantee that it
 * is the build of the current `src/`.
 *
 * Two builds, one rule (never test code other than the sources in the tree):
 *
 * - **from source** (the default): `src/` compiled with `tsconfig.build.json` (the same
 *   compiler and settings as `npm run build`) into a private folder keyed by a hash of
 *   the sources, `node_modules/.cache/imagegen-reliability/<hash>`. A suite therefore never
 *   runs a stale `dist/` and never races another build of `dist/`. The first suite to need
 *   it compiles (~10 s) under a mkdir lock; the others wait for it.
 * - **built** (`{ built: true }`): `dist/cli.js`, the file `bin/imagegen` runs, for suites
 *   that test the package as a user installs it. It must exist and be at least as new as
 *   every file in `src/`, or the suite fails saying `npm run build` is due.
 *
 *   sources      --hash--> cache/<hash>/cli.js   (compiled and bundled once per source state)
 *   npm run build ------> dist/cli.js            (checked once: newer than src/)
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = resolve(fileURLToPath(new URL('.', import.meta.url)), '../..');
/** The built CLI, as `bin/imagegen` runs it. */
export const DIST_CLI = join(REPO_ROOT, 'dist', 'cli.js');
const CACHE = join(REPO_ROOT, 'node_modules', '.cache', 'imagegen-reliability');

export interface CliEntryOptions {
  /** Run `dist/cli.js` (checked to be fresh) instead of a build of `src/`. Default false. */
  readonly built?: boolean;
}

/** Every `.ts` file under `src/`, sorted, so hashes and freshness checks see the same set. */
function sourceFiles(): string[] {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) walk(path);
      // The live page's script and style, and the database thread's script, are sources too
      // (copied beside the compiled code).
      else if (/\.(ts|js|mjs|css)$/.test(name)) files.push(path);
    }
  };
  walk(join(REPO_ROOT, 'src'));
  return files;
}

function sourceHash(): string {
  const hash = createHash('sha256');
  for (const path of sourceFiles()) hash.update(relative(REPO_ROOT, path)).update(readFileSync(path));
  hash.update(readFileSync(join(REPO_ROOT, 'tsconfig.json')));
  return hash.digest('hex').slice(0, 16);
}

let distChecked = false;

/**
 * Fails loudly when `dist/cli.js` is missing or older than a source file (`npm run build`
 * rewrites every output). Checked once per test file: a suite that started on a fresh
 * build keeps running it, even if `src/` is edited meanwhile.
 */
function assertDistFresh(): void {
  if (distChecked) return;
  if (!existsSync(DIST_CLI)) throw new Error(`${DIST_CLI} is missing: this suite runs the built CLI; run \`npm run build\` first`);
  const builtAt = statSync(DIST_CLI).mtimeMs;
  const newer = sourceFiles().filter((path) => statSync(path).mtimeMs > builtAt);
  if (newer.length > 0) {
    const names = newer.slice(0, 3).map((path) => relative(REPO_ROOT, path)).join(', ');
    throw new Error(`${DIST_CLI} is older than ${names}${newer.length > 3 ? ` and ${newer.length - 3} more` : ''}: run \`npm run build\` first`);
  }
  distChecked = true;
}

let compiled: string | undefined;

/**
 * Path of the CLI entry the harness runs: `dist/cli.js` when `built` (after checking it
 * is fresh), else the build of the current sources (compiling it if needed).
 *
 * `IMAGEGEN_RELIABILITY_CLI=/path/cli.js` runs the source-built suites against a given
 * build instead (e.g. a candidate fix).
 *
 * @example
 *   const entry = await cliEntry();                // cache/<hash>/cli.js
 *   const dist = await cliEntry({ built: true });  // dist/cli.js, or throws "run npm run build"
 */
export async function cliEntry(options: CliEntryOptions = {}): Promise<string> {
  if (options.built) {
    assertDistFresh();
    return DIST_CLI;
  }
  if (compiled) return compiled;
  const given = process.env['IMAGEGEN_RELIABILITY_CLI'];
  if (given) return (compiled = resolve(given));
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
        if (!existsSync(entry)) compileInto(dir);
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
    } else {
      if (Date.now() > deadline) throw new Error(`timed out waiting for another process to compile the CLI (${lock})`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  compiled = entry;
  return entry;
}

/** Compiles `src/` into `dir` (via a temp folder renamed into place, so readers never see half a build). */
function compileInto(dir: string): void {
  const tmp = `${dir}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  const tsc = join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
  const out = spawnSync(
    process.execPath,
    [tsc, '-p', join(REPO_ROOT, 'tsconfig.build.json'), '--outDir', tmp, '--declaration', 'false', '--declarationMap', 'false', '--sourceMap', 'false', '--noEmitOnError', 'false'],
    { cwd: REPO_ROOT, encoding: 'utf8' },
  );
  if (!existsSync(join(tmp, 'cli.js'))) throw new Error(`compiling the CLI failed:\n${out.stdout}\n${out.stderr}`);
  // What tsc does not copy: the live page's files, as `npm run build` copies them.
  const assets = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'copy-page-assets.mjs'), tmp], { cwd: REPO_ROOT, encoding: 'utf8' });
  if (assets.status !== 0) throw new Error(`copying the page's assets failed:\n${assets.stderr}`);
  // The CLI as `npm run build` ships it: bundled (scripts/bundle-cli.mjs), so the tests run what `bin/imagegen` runs.
  const bundled = spawnSync(process.execPath, [join(REPO_ROOT, 'scripts', 'bundle-cli.mjs'), tmp], { cwd: REPO_ROOT, encoding: 'utf8' });
  if (bundled.status !== 0) throw new Error(`bundling the CLI failed:\n${bundled.stderr}`);
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
