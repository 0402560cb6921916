// Copies the live page's files (src/http/page/assets: plain CSS and JS, no build step) beside
// the compiled server: `node scripts/copy-page-assets.mjs [outDir]` (default dist). tsc copies
// only what it compiles.
import { cpSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outDir = process.argv[2] ?? join(root, 'dist');
cpSync(join(root, 'src', 'http', 'page', 'assets'), join(outDir, 'http', 'page', 'assets'), { recursive: true });
