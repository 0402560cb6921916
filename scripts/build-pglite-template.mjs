// Ships the template of a new embedded database with the build: `node scripts/build-pglite-template.mjs [outDir]`
// (default dist) writes `<outDir>/pglite-template/pglite-<version>-<key>.tar.gz`, a gzipped dump of a
// freshly initialised and migrated PGlite cluster, keyed as the runtime keys it (PGlite build +
// migrations, see src/db/pglite-template.ts). Run after tsc: it imports the compiled code from outDir,
// so the key is computed from the same compiled migrations the runtime will hash.
//
// Why: without it, the first new data folder on a machine runs initdb in WASM (3.5-6 s, ~800 MiB of
// RSS) in the user's process. The build pays it once instead. A current template is kept (a rebuild
// does not run initdb again); templates of other keys (older PGlite or migrations) are removed.
import { copyFileSync, existsSync, linkSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = resolve(process.argv[2] ?? join(root, 'dist'));
const templateDir = join(outDir, 'pglite-template');
const load = (path) => import(pathToFileURL(join(outDir, path)).href);

const { openDatabase } = await load('db/database.js');
const { MIGRATIONS } = await load('db/migrations/index.js');
const { pgliteTemplateFile } = await load('db/pglite-template.js');

const template = pgliteTemplateFile(templateDir, MIGRATIONS);
if (template === undefined) throw new Error('cannot key the PGlite template: @electric-sql/pglite\'s package.json is unreadable');
// The bundled CLI (scripts/bundle-cli.mjs) holds the same migrations reprinted by the bundler, so it
// keys the same template by another name: ship it under both.
const bundled = existsSync(join(outDir, 'cli-bundle', 'template-key.js')) ? await load('cli-bundle/template-key.js') : undefined;
const bundledTemplate = bundled?.pgliteTemplateFile(templateDir, bundled.MIGRATIONS);
const keep = new Set([template, bundledTemplate]);
mkdirSync(templateDir, { recursive: true });
for (const name of readdirSync(templateDir)) if (!keep.has(join(templateDir, name))) rmSync(join(templateDir, name), { recursive: true, force: true });

if (!existsSync(template)) {
  const started = Date.now();
  // In memory, with the template folder as the cache: the first start runs initdb and the
  // migrations, and openDatabase writes the dump of that clean cluster to `template`.
  const database = await openDatabase({ pgliteTemplateDir: templateDir });
  await database.close();
  if (!existsSync(template)) throw new Error(`PGlite template not written: ${template}`);
  process.stderr.write(`pglite template: ${template} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
}
if (bundledTemplate !== undefined && !existsSync(bundledTemplate)) {
  // A hard link where the file system has them (one copy on disk), else a copy.
  try {
    linkSync(template, bundledTemplate);
  } catch {
    copyFileSync(template, bundledTemplate);
  }
}
