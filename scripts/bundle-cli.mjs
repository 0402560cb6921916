// Bundles the compiled CLI (`dist/cli.js`, `dist/demo.js`) so a command starts in a few
// module loads instead of ~600: `node scripts/bundle-cli.mjs [outDir]` (default dist), run by
// `npm run build` after tsc, and by the test harness's own build of src/ (test/support/cli-entry.ts),
// so every CLI test runs what `bin/imagegen` runs.
//
// Measured (BENCHMARKS.md, section 11C): Node's ESM loader read ~130 of our modules, 258 of
// kysely's and 225 of rxjs's one by one at every start, about 0.35 s before any command ran.
//
// Layout after it (the library, `dist/index.js` and the rest, stays tsc's output, untouched):
//   dist/cli-bundle/cli.js, demo.js, chunk-*.js   our code + rxjs + kysely, code split, so what a
//                                                  command does not use (the server, S3, Gemini, ...)
//                                                  still loads only when it is used
//   dist/cli.js, dist/demo.js                     one line each: import './cli-bundle/<name>.js'
//
// Packages with native code, WASM, worker-thread scripts or files of their own (sharp, PGlite,
// pino's transports, ...) stay external and load from node_modules as before. Our modules that
// find files beside themselves (`new URL('./x', import.meta.url)`: the database thread's script,
// the shipped template, the page's assets) keep finding them: in each module, `import.meta.url`
// is rewritten to the URL of the compiled file it came from, relative to the bundle.
import { build } from 'esbuild';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = resolve(process.argv[2] ?? join(root, 'dist'));
const bundleDir = join(outDir, 'cli-bundle');
const ENTRIES = ['cli', 'demo'];
/**
 * A third entry, for the build only: the migrations and the template key as the bundle holds
 * them. The embedded database's template is keyed by the migrations' code text (see
 * src/db/pglite-template.ts), which the bundler reprints, so the bundled CLI looks for the
 * shipped template under a key of its own; scripts/build-pglite-template.mjs imports this
 * entry to ship the same template under that key too.
 */
const TEMPLATE_KEY = 'template-key';
/** Bundled in: pure JavaScript, many small modules each. Everything else stays external. */
const BUNDLED_PACKAGES = new Set(['rxjs', 'kysely', 'kysely-pglite-dialect']);

const packageName = (specifier) => (specifier.startsWith('@') ? specifier.split('/').slice(0, 2).join('/') : specifier.split('/')[0]);

/** Keeps every package external but the few bundled in (and node's own modules). */
const externals = {
  name: 'externals',
  setup(b) {
    // rxjs's ES module build (its package sends Node to the CommonJS one, which a bundle reaches
    // through a getter per imported name at every call, and cannot tree-shake).
    b.onResolve({ filter: /^rxjs$/ }, () => ({ path: join(dirname(createRequire(join(outDir, 'x.js')).resolve('rxjs/package.json')), 'dist', 'esm', 'index.js') }));
    b.onResolve({ filter: /^[^./]/ }, (args) => {
      if (args.path.startsWith('node:')) return { path: args.path, external: true };
      return BUNDLED_PACKAGES.has(packageName(args.path)) ? undefined : { path: args.path, external: true };
    });
  },
};

/** In our compiled modules, `import.meta.url` becomes the URL of the file the code came from. */
const ownUrl = {
  name: 'own-import-meta-url',
  setup(b) {
    b.onLoad({ filter: /\.js$/ }, (args) => {
      if (!args.path.startsWith(outDir + sep) || args.path.startsWith(bundleDir + sep)) return undefined;
      const source = readFileSync(args.path, 'utf8');
      if (!source.includes('import.meta.url')) return { contents: source, loader: 'js' };
      const fromBundle = relative(bundleDir, args.path).split(sep).join('/');
      return { contents: source.replaceAll('import.meta.url', `new URL(${JSON.stringify(fromBundle)}, import.meta.url).href`), loader: 'js' };
    });
  },
};

const STUB_MARK = '// The bundled ';
for (const name of ENTRIES) {
  if (readFileSync(join(outDir, `${name}.js`), 'utf8').includes(STUB_MARK)) {
    throw new Error(`${join(outDir, `${name}.js`)} is already the bundle's stub: compile src/ first (tsc -p tsconfig.build.json), then bundle`);
  }
}

const staging = `${bundleDir}.tmp-${process.pid}`;
rmSync(staging, { recursive: true, force: true });
const templateKeySource = join(outDir, `${TEMPLATE_KEY}.tmp-${process.pid}.js`);
writeFileSync(templateKeySource, "export { MIGRATIONS } from './db/migrations/index.js';\nexport { pgliteTemplateFile } from './db/pglite-template.js';\n");
try {
  await build({
    entryPoints: { ...Object.fromEntries(ENTRIES.map((name) => [name, join(outDir, `${name}.js`)])), [TEMPLATE_KEY]: templateKeySource },
    outdir: staging,
    bundle: true,
    splitting: true,
    format: 'esm',
    platform: 'node',
    target: 'node20',
    // Keep names (error classes' `name`, stack frames) as tsc wrote them.
    keepNames: true,
    sourcemap: true,
    logLevel: 'warning',
    plugins: [externals, ownUrl],
  });
} finally {
  rmSync(templateKeySource, { force: true });
}
// The staging folder sits beside the final one, so the relative URLs above hold once renamed.
rmSync(bundleDir, { recursive: true, force: true });
renameSync(staging, bundleDir);
for (const name of ENTRIES) {
  const entry = join(outDir, `${name}.js`);
  const shebang = name === 'cli' ? '#!/usr/bin/env node\n' : '';
  writeFileSync(entry, `${shebang}${STUB_MARK}${name} (scripts/bundle-cli.mjs); the compiled modules it came from are beside this file.\nimport './cli-bundle/${name}.js';\n`);
  rmSync(`${entry}.map`, { force: true });
}
