import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type { PGlite, PGliteOptions } from '@electric-sql/pglite';
import type { Migration } from 'kysely/migration';

/** A PGlite instance and how it started. */
export interface OpenedPglite {
  readonly pglite: PGlite;
  /**
   * True when this start created a new cluster (initdb in an empty folder or in memory)
   * rather than loading the template or opening an existing folder: once migrated, a dump
   * of it is a template (see {@link writePgliteTemplate}).
   */
  readonly initialised: boolean;
}

/**
 * Opens a PGlite database (a data folder, or in memory when `dataDir` is undefined),
 * starting a fresh one from a cached template.
 *
 * Why: PGlite's first start of a new cluster runs `initdb` in WASM, 3.5 to 6 s and about
 * 900 MiB on this project's 2-core machine, then the migrations; every user (or test) that
 * starts a new data folder or an in-memory database paid it. The template is a dump of a
 * freshly initialised *and migrated* cluster (4 MiB gzipped, no rows of anyone's), keyed by
 * the PGlite build and the migration list (see {@link pgliteTemplateFile}), so a new folder
 * or in-memory database starts from it in about 1 s with nothing to migrate. It is a cache:
 * a template that cannot be loaded is dropped and the start goes on plainly.
 *
 * Only an empty (or missing) folder gets the template: anything in it is not ours to replace.
 *
 * @param template the template file ({@link pgliteTemplateFile}); undefined = none.
 */
export async function openPgliteDataDir(
  create: (options: PGliteOptions) => Promise<PGlite>,
  dataDir: string | undefined,
  template: string | undefined,
  options: PGliteOptions,
): Promise<OpenedPglite> {
  const empty = dataDir === undefined || !existsSync(dataDir) || readdirSync(dataDir).length === 0;
  const where = dataDir === undefined ? {} : { dataDir };
  if (empty && template !== undefined && existsSync(template)) {
    try {
      return { pglite: await create({ ...options, ...where, loadDataDir: new Blob([readFileSync(template)]) }), initialised: false };
    } catch {
      // A damaged or foreign template: drop it and the half-made folder, start plainly.
      rmSync(template, { force: true });
      if (dataDir !== undefined) {
        rmSync(dataDir, { recursive: true, force: true });
        mkdirSync(dataDir, { recursive: true });
      }
    }
  }
  return { pglite: await create({ ...options, ...where }), initialised: empty };
}

/**
 * Writes the template from a cluster that was just initialised and migrated (before
 * anything else was written to it): atomically (temp file + rename), once. A failure
 * leaves no template; the next new cluster tries again.
 */
export async function writePgliteTemplate(pglite: PGlite, template: string): Promise<void> {
  if (existsSync(template)) return;
  try {
    const dump = await pglite.dumpDataDir('gzip');
    mkdirSync(dirname(template), { recursive: true });
    const temp = `${template}.tmp-${process.pid}`;
    writeFileSync(temp, Buffer.from(await dump.arrayBuffer()));
    renameSync(temp, template);
  } catch {
    // Only a cache.
  }
}

/**
 * `<templateDir>/pglite-<version>-<hash>.tar.gz`, the hash covering the PGlite build and
 * the migrations the template holds, by name and by the text of their code (a new or an
 * edited migration makes a new template). Undefined when PGlite's package cannot be read.
 */
export function pgliteTemplateFile(templateDir: string, migrations: Readonly<Record<string, Migration>>): string | undefined {
  try {
    const entry = createRequire(import.meta.url).resolve('@electric-sql/pglite');
    let dir = dirname(entry);
    while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
    const pkg = readFileSync(join(dir, 'package.json'));
    const version = (JSON.parse(pkg.toString('utf8')) as { version?: string }).version ?? 'unknown';
    const hash = createHash('sha256').update(pkg);
    for (const [name, migration] of Object.entries(migrations)) hash.update(`\0${name}\0${String(migration.up)}\0${String(migration.down)}`);
    const key = hash.digest('hex').slice(0, 12);
    return join(templateDir, `pglite-${version}-${key}.tar.gz`);
  } catch {
    return undefined;
  }
}
