// Copies what tsc does not compile beside the compiled code: `node scripts/copy-page-assets.mjs
// [outDir]` (default dist). tsc copies only what it compiles.
// - the live page's files (src/http/page/assets: plain CSS and JS, no build step);
// - the embedded database's thread (src/db/pglite-thread.mjs: a worker_threads entry, plain
//   JavaScript so the tests run it from src/ as it is).
import { cpSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = process.argv[2] ?? join(root, 'dist');
cpSync(join(root, 'src', 'http', 'page', 'assets'), join(outDir, 'http', 'page', 'assets'), { recursive: true });
cpSync(join(root, 'src', 'db', 'pglite-thread.mjs'), join(outDir, 'db', 'pglite-thread.mjs'));
