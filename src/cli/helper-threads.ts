/**
 * The project's own programs (the `imagegen` CLI, `npm run demo`) run their helper threads
 * under Linux's `SCHED_BATCH` policy, so that a helper that wakes up never preempts the event
 * loop. The library never does this: a host's threads are the host's.
 *
 * Why (issue 16, goal 2; BENCHMARKS.md 11H): the main thread wakes a helper for every
 * statement (the database's thread), every provider call and every delivered image (the
 * image thread); libuv's pool and libvips's threads wake for sharp's work. A woken thread
 * under the normal policy, having slept, is owed CPU time and takes the waker's core at
 * once when the other core is busy: on the 2-core test machine a `postMessage` to a sleeping
 * thread took 130-160 µs of the event loop's time in a run (26 µs alone), and the main
 * thread spent ~30% of its busy time waiting for its core. A `SCHED_BATCH` thread keeps the
 * same share of the CPU (its nice value is unchanged) but is never scheduled ahead of the
 * thread that woke it: it runs on an idle core, or when the waker's turn ends.
 *
 * How: Node has no call to set a thread's policy, so `chrt -b -p 0 <tid>` (util-linux; every
 * Linux distribution has it) does, for each helper thread found in `/proc/self/task` that does
 * not have it yet (threads created by a batch thread inherit it: libvips's). The threads are
 * looked for now and then every {@link SWEEP_INTERVAL_MS} (an unref'd timer: the database's
 * and the image thread start later, libuv's pool at its first use). A thread is asked for once;
 * where there is no `chrt` (or no `/proc`), nothing happens and nothing fails.
 */
import { spawn } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

/** How often new helper threads are looked for. */
export const SWEEP_INTERVAL_MS = 500;

/** `SCHED_BATCH`'s number (`sched.h`), as `/proc/<tid>/stat` shows a thread's policy. */
export const SCHED_BATCH = 3;

export interface HelperThreadsOptions {
  /** Where the process's threads are listed. Default `/proc/self/task`. */
  readonly taskDir?: string;
  /** The thread left alone: the event loop's. Default `process.pid` (the main thread's id). */
  readonly mainThreadId?: number;
  /** Asks for `SCHED_BATCH` for these threads. Default: one `sh` running `chrt -b -p 0` for each, not waited for. */
  readonly setBatch?: (threadIds: readonly number[]) => void;
  /** Default {@link SWEEP_INTERVAL_MS}; 0: no timer (the caller sweeps). */
  readonly intervalMs?: number;
}

/** What {@link batchHelperThreads} started. */
export interface HelperThreads {
  /** Looks for new helper threads now; returns the ids it asked `SCHED_BATCH` for. */
  sweep(): number[];
  /** Stops looking (the threads keep their policy). */
  stop(): void;
}

/**
 * A thread's scheduling policy (the 41st field of its `stat`), or undefined when it is gone.
 *
 * @example policyOf('/proc/self/task', 1234) // 0 (SCHED_OTHER) or 3 (SCHED_BATCH)
 */
export function policyOf(taskDir: string, threadId: number): number | undefined {
  try {
    const stat = readFileSync(join(taskDir, String(threadId), 'stat'), 'utf8');
    // The name (field 2) may hold spaces and parentheses: the fields after it follow the last ')'.
    const policy = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
    return Number.isInteger(policy) ? policy : undefined;
  } catch {
    return undefined;
  }
}

function chrtBatch(threadIds: readonly number[]): void {
  try {
    const child = spawn('sh', ['-c', 'for t do chrt -b -p 0 "$t"; done', 'sh', ...threadIds.map(String)], { stdio: 'ignore' });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // No shell to spawn: the threads keep the normal policy.
  }
}

/**
 * Starts giving the process's helper threads `SCHED_BATCH` (Linux; elsewhere, or without
 * `/proc`, returns undefined and does nothing). See the module's comment for why and how.
 *
 * @example
 * batchHelperThreads(); // the CLI, before it opens its database
 */
export function batchHelperThreads(options: HelperThreadsOptions = {}): HelperThreads | undefined {
  if (options.taskDir === undefined && process.platform !== 'linux') return undefined;
  const taskDir = options.taskDir ?? '/proc/self/task';
  const mainThreadId = options.mainThreadId ?? process.pid;
  const setBatch = options.setBatch ?? chrtBatch;
  /** Threads seen (asked for, or batch already); a thread that ended is forgotten (ids are reused). */
  let seen = new Set<number>();
  let timer: NodeJS.Timeout | undefined;
  const stop = () => {
    if (timer !== undefined) clearInterval(timer);
    timer = undefined;
  };
  /** The thread ids listed now; undefined when the folder cannot be listed. */
  const list = (): string[] | undefined => {
    try {
      return readdirSync(taskDir);
    } catch {
      return undefined;
    }
  };
  const sweepListed = (names: readonly string[]): number[] => {
    const now = new Set<number>();
    const asked: number[] = [];
    for (const name of names) {
      const threadId = Number(name);
      if (!Number.isInteger(threadId) || threadId === mainThreadId) continue;
      now.add(threadId);
      if (seen.has(threadId)) continue;
      const policy = policyOf(taskDir, threadId);
      if (policy === undefined) continue; // ended meanwhile
      if (policy !== SCHED_BATCH) asked.push(threadId);
    }
    seen = now;
    if (asked.length > 0) setBatch(asked);
    return asked;
  };
  const sweep = (): number[] => {
    const names = list();
    if (names !== undefined) return sweepListed(names);
    stop();
    return [];
  };
  const first = list();
  if (first === undefined) return undefined;
  sweepListed(first);
  const intervalMs = options.intervalMs ?? SWEEP_INTERVAL_MS;
  if (intervalMs > 0) {
    timer = setInterval(sweep, intervalMs);
    timer.unref();
  }
  return { sweep, stop };
}
