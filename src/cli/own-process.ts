/**
 * Settings the project's own programs (the `imagegen` CLI, `npm run demo`) make for their
 * process at start. The library never makes them: a host's process is the host's.
 */
import { setFlagsFromString } from 'node:v8';
import { turnSharpOperationCacheOff } from '../adapters/image-codec.js';
import { quietAwsSdkNodeNotice } from '../config.js';
import { batchHelperThreads, type HelperThreads } from './helper-threads.js';
import type { DatabaseOpening } from './invocation.js';

/**
 * How far V8 lets the old generation grow past what its last full collection left live
 * before the next one (`--heap-growing-percent`): 50 = 1.5x.
 *
 * Why: a job's per-attempt objects (the provider's answer, the statements, the events) live
 * across a few young-generation collections and are promoted; they are garbage soon after,
 * but V8's own choice, on a machine with gigabytes free and a cheap collector, is to let the
 * old generation reach up to 4x its live size first. The live heap of a run stays ~30-45 MiB
 * whatever its length, yet a 10,000-image run peaked at 378 MiB of heap (BENCHMARKS.md
 * figure 4). At 1.5x, a 3,000-image run peaks at 76 MiB of heap instead of 146, and its RSS
 * at 359 MiB instead of 473, for a few more full collections of ~10 ms each (figure 11C).
 */
export const HEAP_GROWING_PERCENT = 50;

/** Every setting below, once, first thing in the process. */
export function tuneOwnProcess(): void {
  turnSharpOperationCacheOff();
  keepOldGenerationTight();
  quietAwsSdkNodeNotice();
}

/**
 * Whether node was started with `--<flag>` (either spelling, `-` or `_`). A V8 flag like this
 * one cannot come through `NODE_OPTIONS` (node refuses to start), so the command line is all.
 *
 * @example nodeFlagGiven('heap-growing-percent', ['--heap_growing_percent=20']) // true
 */
export function nodeFlagGiven(flag: string, execArgv: readonly string[] = process.execArgv): boolean {
  const names = new Set([flag.replaceAll('_', '-'), flag.replaceAll('-', '_')].map((name) => `--${name}`));
  return execArgv.some((arg) => names.has(arg.split('=')[0]!));
}

/**
 * Sets `--heap-growing-percent` to {@link HEAP_GROWING_PERCENT}, unless node was started with
 * it (`node --heap-growing-percent=N dist/cli.js ...`): the user's value wins. V8 reads the flag each time it
 * sets the next collection's limit, so setting it at run time takes effect from the next
 * full collection. Returns whether it was set.
 */
export function keepOldGenerationTight(given: boolean = nodeFlagGiven('heap-growing-percent')): boolean {
  if (given) return false;
  setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}

/**
 * Before a command starts the embedded database (PGlite: postgres compiled to WASM): V8's
 * `--liftoff-only`, unless node was started with `--liftoff-only` or `--no-liftoff-only`
 * (the user's choice wins). Returns whether it was set. PostgreSQL runs no WASM here: left alone.
 *
 * Why: postgres's WASM (10 MB) is compiled by Liftoff, V8's quick baseline compiler, as it
 * first runs; V8 then recompiles every function that gets hot with TurboFan, in background
 * threads. For PGlite that recompilation costs more than it saves, in every run measured on the
 * 2-core test machine (BENCHMARKS.md 11D, alternated runs): `credits balance` on an existing
 * folder 1.23-1.30 s -> 0.85-0.93 s (the process waits for the compile jobs before it can
 * end); CPU per delivered image 12.7 vs 13.6 ms over 3,000 images, figure 3A 1.22-1.36 vs
 * 1.38-1.62, 256 px throughput 80-90 vs 65-68 images/s, peak RSS 30-55 MiB lower (no
 * optimised code kept). The flag is V8's for the whole process (the database's thread too),
 * which is why only the project's own programs set it, never the library.
 */
export function wasmBaselineOnly(opening: DatabaseOpening, given: boolean = nodeFlagGiven('liftoff-only') || nodeFlagGiven('no-liftoff-only')): boolean {
  if (given || !opening.embedded) return false;
  setFlagsFromString('--liftoff-only');
  return true;
}

let helperThreads: HelperThreads | undefined;

/**
 * What the project's own programs set just before a command opens its database (the CLI's
 * and the demo's `beforeDatabase`): {@link wasmBaselineOnly}, and, for a command that runs
 * jobs, its helper threads under `SCHED_BATCH` unless `IMAGEGEN_HELPER_THREADS=normal`
 * (`batchHelperThreads`, src/cli/helper-threads.ts; once per process: it keeps looking for
 * new threads). A command of a few queries starts no helper thread worth it.
 */
export function beforeOwnDatabase(opening: DatabaseOpening): void {
  wasmBaselineOnly(opening);
  if (opening.runsJobs && opening.helperThreads === 'batch' && helperThreads === undefined) helperThreads = batchHelperThreads();
}
