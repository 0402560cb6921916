/**
 * Settings the project's own programs (the `imagegen` CLI, `npm run demo`) make for their
 * process at start. The library never makes them: a host's process is the host's.
 */
import { setFlagsFromString } from 'node:v8';
import { turnSharpOperationCacheOff } from '../adapters/image-codec.js';
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
 * Before a command of a few queries (`credits balance`, `status`, `stats`, ...) starts the
 * embedded database: V8's `--liftoff-only`, unless node was started with `--liftoff-only` or
 * `--no-liftoff-only` (the user's choice wins). Returns whether it was set.
 *
 * Why: postgres's WASM is compiled by Liftoff (V8's quick baseline compiler) as it first runs,
 * and V8 recompiles its hot functions with TurboFan in the background. In a process that
 * lives a second, that recompilation is all cost: the start and the catalog reads make
 * hundreds of functions hot, and the process waits for those compile jobs before it can end.
 * `credits balance` on an existing folder took 1.17 s with it and 0.83 s without on the
 * 2-core test machine, in alternated runs (BENCHMARKS.md 11D). A command that runs jobs keeps
 * TurboFan: its SQL runs for minutes, where the optimised code pays. The flag is V8's for
 * the whole process, so it is set only in a process of one short command.
 */
export function startWasmQuickly(opening: DatabaseOpening, given: boolean = nodeFlagGiven('liftoff-only') || nodeFlagGiven('no-liftoff-only')): boolean {
  if (given || !opening.embedded || opening.runsJobs) return false;
  setFlagsFromString('--liftoff-only');
  return true;
}
