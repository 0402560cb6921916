/**
 * The CLI ships bundled (scripts/bundle-cli.mjs): a command loads the bundle's few files, not
 * the ~600 compiled modules of ours, kysely's and rxjs's one by one (BENCHMARKS.md 11C), and the
 * parts a command does not use (the HTTP server, S3, Gemini, sharp) still load only when used.
 * Checked on the harness's build of src/, which bundles exactly as `npm run build` does, by a
 * loader hook that lists every module the process resolves.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { cliEntry } from '../support/cli-entry.js';

const work = mkdtempSync(join(tmpdir(), 'imagegen-bundle-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

/** A preload that registers a resolve hook writing every resolved URL to `<log>`, one per line. */
function loaderHook(log: string): string {
  const hooks = join(work, 'hooks.mjs');
  writeFileSync(
    hooks,
    `import { appendFileSync } from 'node:fs';\nexport async function resolve(specifier, context, next) {\n  const resolved = await next(specifier, context);\n  appendFileSync(${JSON.stringify(log)}, resolved.url + '\\n');\n  return resolved;\n}\n`,
  );
  const register = join(work, 'register.mjs');
  writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
  return register;
}

/** Runs the CLI with `args` and returns the file paths of the modules it loaded, and its result. */
function loadedBy(entry: string, args: string[], env: Record<string, string> = {}): { files: string[]; status: number | null; stdout: string; stderr: string } {
  const log = join(work, `loaded-${args.join('-')}.txt`);
  rmSync(log, { force: true });
  const out = spawnSync(process.execPath, ['--import', loaderHook(log), entry, ...args], {
    encoding: 'utf8',
    env: { PATH: process.env['PATH'], HOME: work, XDG_CACHE_HOME: join(work, 'xdg'), IMAGEGEN_DATA_DIR: join(work, 'data'), IMAGEGEN_LOG_LEVEL: 'silent', ...env },
  });
  const urls = readFileSync(log, 'utf8').split('\n').filter((url) => url.startsWith('file://'));
  return { files: [...new Set(urls.map((url) => fileURLToPath(url)))], status: out.status, stdout: out.stdout, stderr: out.stderr };
}

describe('the bundled CLI', () => {
  it('a command loads the bundle, not the compiled modules nor kysely and rxjs one by one; what it does not use is never loaded', { timeout: 120_000 }, async () => {
    const entry = await cliEntry();
    const build = dirname(entry);
    const ownModules = (files: string[]) => files.filter((file) => file.startsWith(build + '/'));
    const ofPackage = (files: string[], name: string) => files.filter((file) => file.includes(`/node_modules/${name}/`));

    const help = loadedBy(entry, ['--help']);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toContain('imagegen run');
    // Ours: the entry's one line, then the bundle's files only (never a compiled module beside them).
    const own = ownModules(help.files);
    expect(own[0]).toBe(entry);
    expect(own.slice(1).every((file) => file.startsWith(join(build, 'cli-bundle') + '/')), own.join('\n')).toBe(true);
    expect(own.length).toBeLessThan(30);
    expect(ofPackage(help.files, 'kysely')).toEqual([]);
    expect(ofPackage(help.files, 'rxjs')).toEqual([]);

    // A command that opens the embedded database: PGlite (external, with its WASM) is loaded; the
    // HTTP server, the S3 client, the Gemini SDK and sharp are not.
    const grant = loadedBy(entry, ['credits', 'grant', 'ana', '3']);
    expect(grant.status, grant.stderr).toBe(0);
    expect(grant.stdout).toContain('balance 3');
    expect(ofPackage(grant.files, '@electric-sql/pglite').length).toBeGreaterThan(0);
    for (const unused of ['fastify', '@aws-sdk/client-s3', '@google/genai', 'sharp']) expect(ofPackage(grant.files, unused), unused).toEqual([]);
    expect(ownModules(grant.files).every((file) => file === entry || file.startsWith(join(build, 'cli-bundle') + '/'))).toBe(true);
  });
});
