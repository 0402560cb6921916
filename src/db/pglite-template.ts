import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { PGlite, PGliteOptions } from '@electric-sql/pglite';

/**
 * Opens a PGlite data folder, starting a fresh one from a cached template.
 *
 * Why: PGlite's first start in an empty folder runs `initdb` in WASM, about 6 s and
 * 900 MiB on this project's reference machine, every time a user (or a test) starts
 * in a new data folder. A dump of a freshly initialised cluster (4 MiB gzipped, no
 * schema in it: migrations run after) starts a new folder in about 1.5 s. The
 * template is keyed by the PGlite build, written atomically (temp file + rename) the
 * first time a fresh folder is initialised, and ignored (then rebuilt) when it cannot
 * be loaded. It is a cache: any failure around it falls back to a plain start.
 *
 * @param templateDir where templates live; undefined = no template.
 */
export async function openPgliteDataDir(
  create: (options: PGliteOptions) => Promise<PGlite>,
  dataDir: string | undefined,
  templateDir: string | undefined,
  options: PGliteOptions,
): Promise<PGlite> {
  if (dataDir === undefined) return create(options);
  // Only an empty (or missing) folder gets the template: anything else in it is not ours to replace.
  const empty = !existsSync(dataDir) || readdirSync(dataDir).length === 0;
  const template = templateDir === undefined || !empty ? undefined : templateFile(templateDir);
  if (template !== undefined && existsSync(template)) {
    try {
      return await create({ ...options, dataDir, loadDataDir: new Blob([readFileSync(template)]) });
    } catch {
      // A damaged or foreign template: drop it and the half-made folder, start plainly.
      rmSync(template, { force: true });
      rmSync(dataDir, { recursive: true, force: true });
      mkdirSync(dataDir, { recursive: true });
    }
  }
  const pglite = await create({ ...options, dataDir });
  if (template !== undefined && !existsSync(template)) {
    try {
      const dump = await pglite.dumpDataDir('gzip');
      mkdirSync(dirname(template), { recursive: true });
      const temp = `${template}.tmp-${process.pid}`;
      writeFileSync(temp, Buffer.from(await dump.arrayBuffer()));
      renameSync(temp, template);
    } catch {
      // Only a cache: the next fresh folder tries again.
    }
  }
  return pglite;
}

/** `<templateDir>/pglite-<version>-<hash of the build>.tar.gz`. */
function templateFile(templateDir: string): string | undefined {
  try {
    const entry = createRequire(import.meta.url).resolve('@electric-sql/pglite');
    let dir = dirname(entry);
    while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
    const pkg = readFileSync(join(dir, 'package.json'));
    const version = (JSON.parse(pkg.toString('utf8')) as { version?: string }).version ?? 'unknown';
    const build = createHash('sha256').update(pkg).digest('hex').slice(0, 12);
    return join(templateDir, `pglite-${version}-${build}.tar.gz`);
  } catch {
    return undefined;
  }
}
