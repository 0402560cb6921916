import { createHash } from 'node:crypto';
import { closeSync, createReadStream, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createGunzip } from 'node:zlib';
import type { PGlite, PGliteOptions } from '@electric-sql/pglite';
import type { Migration } from 'kysely/migration';

/** What a template is dumped from: PGlite, in this thread or in its own (`PgliteRemote`). */
export interface DumpablePglite {
  dumpDataDir(compression: 'gzip'): Promise<Blob>;
}

/** A PGlite instance (PGlite, or `PgliteRemote`: PGlite in a thread of its own) and how it started. */
export interface OpenedPglite<P extends DumpablePglite = PGlite> {
  readonly pglite: P;
  /**
   * True when this start created a new cluster (initdb in an empty folder or in memory)
   * rather than loading a template or opening an existing folder: once migrated, a dump
   * of it is a template (see {@link writePgliteTemplate}).
   */
  readonly initialised: boolean;
  /** The template file this start was made from; undefined = none (initdb, or an existing folder). */
  readonly template: string | undefined;
}

/** A template file a new database may start from. */
export interface PgliteTemplate {
  readonly file: string;
  /**
   * True for the user's cache: a damaged file is deleted (the next new cluster writes a
   * good one). False for the template shipped with the build (`dist/pglite-template`),
   * which is never ours to delete: a damaged one is only skipped.
   */
  readonly cache: boolean;
}

/**
 * The folder of the template `npm run build` ships (`scripts/build-pglite-template.mjs`):
 * `dist/pglite-template`, beside the compiled `dist/db`. Run from `src/` (tests) it names
 * `src/pglite-template`, which does not exist: sources have no shipped template.
 */
export const SHIPPED_PGLITE_TEMPLATE_DIR = fileURLToPath(new URL('../pglite-template', import.meta.url));

/**
 * The templates a new database may start from, in the order tried: the user's cache
 * (`cacheDir`), then the one shipped with the build (`shippedDir`). Both are keyed the same
 * way ({@link pgliteTemplateFile}: PGlite build + migrations), so a template made by another
 * PGlite or for other migrations has another name and is never found.
 */
export function pgliteTemplates(cacheDir: string, migrations: Readonly<Record<string, Migration>>, shippedDir: string = SHIPPED_PGLITE_TEMPLATE_DIR): PgliteTemplate[] {
  const cached = pgliteTemplateFile(cacheDir, migrations);
  const shipped = pgliteTemplateFile(shippedDir, migrations);
  return [...(cached === undefined ? [] : [{ file: cached, cache: true }]), ...(shipped === undefined || shipped === cached ? [] : [{ file: shipped, cache: false }])];
}

/**
 * Opens a PGlite database (a data folder, or in memory when `dataDir` is undefined),
 * starting a fresh one from a template.
 *
 * Why: PGlite's first start of a new cluster runs `initdb` in WASM, 3.5 to 6 s and about
 * 800-900 MiB of RSS on this project's 2-core machine, then the migrations; every user (or
 * test) that starts a new data folder or an in-memory database paid it. The template is a
 * dump of a freshly initialised *and migrated* cluster (4 MiB gzipped, no rows of anyone's),
 * keyed by the PGlite build and the migration list (see {@link pgliteTemplateFile}); the
 * build ships one and the user's cache holds one made on this machine. It is a cache: a
 * template that cannot be used is skipped (a cached one deleted) and the start goes on
 * with the next one, then plainly.
 *
 * A data folder gets the template unpacked onto disk by a streaming gunzip + untar
 * ({@link extractPgliteTemplate}) and PGlite then opens it as an existing cluster: PGlite's
 * own `loadDataDir` holds the whole tarball in memory several times over (the file, the
 * gunzipped 40 MB, the untarred copies, the WASM file system), which made the start of a new
 * folder the peak of a short run (BENCHMARKS.md section 11). In memory there is no disk to
 * unpack onto, so `loadDataDir` is used.
 *
 * Only an empty (or missing) folder gets a template: anything in it is not ours to replace.
 *
 * @param templates tried in order (see {@link pgliteTemplates}); missing files are skipped.
 */
export async function openPgliteDataDir<P extends DumpablePglite = PGlite>(
  create: (options: PGliteOptions) => Promise<P>,
  dataDir: string | undefined,
  templates: readonly PgliteTemplate[],
  options: PGliteOptions,
): Promise<OpenedPglite<P>> {
  const empty = dataDir === undefined || !existsSync(dataDir) || readdirSync(dataDir).every((name) => name.startsWith(UNPACKING));
  if (empty) {
    if (dataDir !== undefined) emptyFolder(dataDir);
    for (const { file, cache } of templates) {
      if (!existsSync(file)) continue;
      try {
        if (dataDir === undefined) {
          // The MIME type tells PGlite to gunzip first (without it, it tries to untar the gzip, fails, then gunzips).
          return { pglite: await create({ ...options, loadDataDir: new Blob([readFileSync(file)], { type: 'application/gzip' }) }), initialised: false, template: file };
        }
        await extractPgliteTemplate(file, dataDir);
        return { pglite: await create({ ...options, dataDir }), initialised: false, template: file };
      } catch {
        // A damaged or foreign template: drop it if it is the cache's, and the half-made folder; try the next.
        if (cache) rmSync(file, { force: true });
        if (dataDir !== undefined) emptyFolder(dataDir);
      }
    }
  }
  return { pglite: await create({ ...options, ...(dataDir === undefined ? {} : { dataDir }) }), initialised: empty, template: undefined };
}

/** Removes what is inside `dir`, keeping `dir` itself (a mount point or a symlink stays what it is). */
function emptyFolder(dir: string): void {
  if (!existsSync(dir)) return;
  for (const name of readdirSync(dir)) rmSync(join(dir, name), { recursive: true, force: true });
}

/** ustar: 512-byte records; a header's fields are NUL-terminated ASCII, numbers in octal. */
const RECORD = 512;

/** The folder a template is unpacked into, inside the data folder (same file system, so moving its entries out is a rename). */
const UNPACKING = '.template-unpacking-';

/**
 * Unpacks a template (a gzipped tar as PGlite's `dumpDataDir('gzip')` writes it: regular
 * files and folders, names starting with `/`) into `dataDir`, which must be empty or
 * missing, streaming: memory stays at a few chunks whatever the template's size.
 *
 * It unpacks into a folder inside `dataDir`, then renames the entries out, `PG_VERSION` last
 * (PGlite takes a folder with `PG_VERSION` for a cluster): a crash while unpacking leaves
 * only that folder, which the next start treats as empty ({@link openPgliteDataDir}). The
 * data folder itself is never removed or replaced: it may be a mount point or a symlink.
 *
 * @throws when the file is not a gzipped tar of a cluster (a header fails its checksum,
 *   an entry is of another type, a name leaves the folder, no `PG_VERSION`, a truncated file);
 *   `dataDir` is then as it was (a folder this call created is removed).
 */
export async function extractPgliteTemplate(template: string, dataDir: string): Promise<void> {
  const created = !existsSync(dataDir);
  const temp = join(dataDir, `${UNPACKING}${process.pid}`);
  rmSync(temp, { recursive: true, force: true });
  mkdirSync(temp, { recursive: true });
  try {
    // Large chunks: fewer turns of the loop and fewer writes (the 16 MiB WAL segment is most of the bytes).
    await untarInto(createReadStream(template, { highWaterMark: 1 << 20 }).pipe(createGunzip({ chunkSize: 1 << 20 })), temp);
    if (!existsSync(join(temp, 'PG_VERSION'))) throw new Error(`${template} holds no PGlite cluster (no PG_VERSION)`);
    const names = readdirSync(temp).filter((name) => name !== 'PG_VERSION');
    for (const name of [...names, 'PG_VERSION']) renameSync(join(temp, name), join(dataDir, name));
    rmdirSync(temp);
  } catch (error) {
    rmSync(created ? dataDir : temp, { recursive: true, force: true });
    throw error;
  }
}

/** The tar reader of {@link extractPgliteTemplate}: a header, then a file's bytes written as they arrive, then its padding. */
async function untarInto(source: AsyncIterable<Buffer>, root: string): Promise<void> {
  let header = Buffer.alloc(0);
  let file: { fd: number; left: number } | undefined;
  let skip = 0;
  let ended = false;
  try {
    for await (const chunk of source) {
      let at = 0;
      while (at < chunk.length && !ended) {
        if (file !== undefined) {
          const n = Math.min(file.left, chunk.length - at);
          writeSync(file.fd, chunk, at, n);
          at += n;
          file.left -= n;
          if (file.left === 0) {
            closeSync(file.fd);
            file = undefined;
          }
        } else if (skip > 0) {
          const n = Math.min(skip, chunk.length - at);
          at += n;
          skip -= n;
        } else {
          const n = Math.min(RECORD - header.length, chunk.length - at);
          header = Buffer.concat([header, chunk.subarray(at, at + n)]);
          at += n;
          if (header.length < RECORD) continue;
          const entry = parseHeader(header);
          header = Buffer.alloc(0);
          if (entry === 'end') {
            ended = true;
            continue;
          }
          const path = join(root, entry.name);
          if (entry.type === 'dir') {
            mkdirSync(path, { recursive: true });
            continue;
          }
          mkdirSync(dirname(path), { recursive: true });
          const fd = openSync(path, 'w');
          if (entry.size === 0) closeSync(fd);
          else file = { fd, left: entry.size };
          skip = (RECORD - (entry.size % RECORD)) % RECORD;
        }
      }
    }
  } finally {
    if (file !== undefined) closeSync(file.fd);
  }
  if (!ended || file !== undefined) throw new Error('the template tarball is truncated');
}

function parseHeader(header: Buffer): 'end' | { name: string; type: 'file' | 'dir'; size: number } {
  if (header.every((byte) => byte === 0)) return 'end';
  const text = (from: number, length: number) => {
    const field = header.subarray(from, from + length);
    const nul = field.indexOf(0);
    return field.subarray(0, nul === -1 ? length : nul).toString('latin1');
  };
  const octal = (from: number, length: number) => {
    const digits = text(from, length).trim();
    if (!/^[0-7]*$/.test(digits)) throw new Error('the template tarball has a damaged header');
    return digits === '' ? 0 : parseInt(digits, 8);
  };
  // The checksum counts its own field as eight spaces.
  let sum = 0;
  for (let i = 0; i < RECORD; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i]!;
  if (sum !== octal(148, 8)) throw new Error('the template tarball has a damaged header');
  const prefix = text(257, 5) === 'ustar' ? text(345, 155) : '';
  const name = (prefix === '' ? '' : `${prefix}/`) + text(0, 100);
  const parts = name.split('/').filter((part) => part !== '' && part !== '.');
  if (parts.length === 0 || parts.includes('..')) throw new Error(`the template tarball names a path outside its folder: ${JSON.stringify(name)}`);
  const flag = String.fromCharCode(header[156]!);
  const type = flag === '5' ? 'dir' : flag === '0' || flag === '\0' ? 'file' : undefined;
  if (type === undefined) throw new Error(`the template tarball holds an entry of type ${JSON.stringify(flag)}: only files and folders are expected`);
  return { name: parts.join('/'), type, size: type === 'dir' ? 0 : octal(124, 12) };
}

/**
 * Writes the template from a cluster that was just initialised and migrated (before
 * anything else was written to it): atomically (temp file + rename), once. A failure
 * leaves no template; the next new cluster tries again.
 */
export async function writePgliteTemplate(pglite: DumpablePglite, template: string): Promise<void> {
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
