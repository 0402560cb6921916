// Copies what tsc does not compile beside the compiled code: `node scripts/copy-page-assets.mjs
// [outDir]` (default dist). tsc copies only what it compiles.
// - the live page's files (src/http/page/assets: plain CSS and JS, no build step);
// - the database threads (src/db/pglite-thread.mjs, the embedded database; src/db/pg-thread.mjs,
//   PostgreSQL's client; src/db/thread-shared.mjs, what both import): worker_threads entries, plain
//   JavaScript so the tests run them from src/ as they are.
import { cpSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = process.argv[2] ?? join(root, 'dist');
cpSync(join(root, 'src', 'http', 'page', 'assets'), join(outDir, 'http', 'page', 'assets'), { recursive: true });
cpSync(join(root, 'src', 'db', 'pglite-thread.mjs'), join(outDir, 'db', 'pglite-thread.mjs'));
cpSync(join(root, 'src', 'db', 'pg-thread.mjs'), join(outDir, 'db', 'pg-thread.mjs'));
cpSync(join(root, 'src', 'db', 'thread-shared.mjs'), join(outDir, 'db', 'thread-shared.mjs'));
