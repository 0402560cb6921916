/**
 * Runs every benchmark, one after the other, each in its own Node process (so no run
 * shares a heap or a warmed-up cache with another), and prints their output.
 * `npm run bench` (see BENCHMARKS.md for the scripts entry). One benchmark: `npm run bench -- makespan`.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
const here = dirname(fileURLToPath(import.meta.url));
const all = ['makespan', 'vs-source', 'cpu-per-image', 'rss'];
const chosen = process.argv.slice(2).length > 0 ? process.argv.slice(2) : all;
let failed = 0;
for (const name of chosen) {
    if (!all.includes(name)) {
        console.error(`unknown benchmark ${name}; known: ${all.join(', ')}`);
        process.exit(2);
    }
    console.log(`\n## ${name}  (node dist-bench/bench/${name}.js)`);
    const result = spawnSync(process.execPath, [join(here, `${name}.js`)], { stdio: 'inherit' });
    if (result.status !== 0)
        failed++;
}
process.exit(failed > 0 ? 1 : 0);
