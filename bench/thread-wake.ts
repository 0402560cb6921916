/**
 * What one `postMessage` to another thread costs the SENDER in CPU, when the receiving thread
 * sleeps (its event loop idle: the message must wake it) and when it is busy (running: no
 * wake-up needed). Every message between the main thread and the database's or the image
 * thread is one such post; on a VM, waking a thread whose virtual CPU is idle can cost far
 * more than the message itself (BENCHMARKS.md 11I).
 *
 * The sender is a worker thread posting `BENCH_POSTS` (1000) small messages to the main
 * thread, one every 2 ms; its CPU time around each call is read from
 * `/proc/thread-self/schedstat` (ns the thread ran, kernel time included). The main thread is
 * idle in one run and spins in 2 ms slices (giving way to its event loop between them) in
 * the other. Linux only.
 *
 * `npx tsc -p tsconfig.bench.json && node dist-bench/bench/thread-wake.js`
 */
import { readFileSync } from 'node:fs';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';

const POSTS = Number(process.env['BENCH_POSTS'] ?? 1000);

/** This thread's CPU time so far, ns. */
function threadCpuNs(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

/** One run: the worker's mean CPU per post, µs, with the main thread `busy` or idle. */
function run(busy: boolean): Promise<number> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { posts: POSTS } });
    let spinning = busy;
    const spin = (): void => {
      if (!spinning) return;
      const until = performance.now() + 2;
      while (performance.now() < until);
      setImmediate(spin);
    };
    spin();
    worker.on('message', (message: { meanUs?: number }) => {
      if (message.meanUs === undefined) return;
      spinning = false;
      void worker.terminate();
      resolve(message.meanUs);
    });
    worker.on('error', reject);
  });
}

if (isMainThread) {
  if (process.platform !== 'linux') throw new Error('thread-wake reads /proc/thread-self/schedstat: Linux only');
  const idle = await run(false);
  const busy = await run(true);
  console.log(`thread-wake: ${POSTS} posts from a worker to the main thread, CPU of the sender per post`);
  console.log(`  receiver idle (asleep, woken by each post): ${idle.toFixed(1)} us`);
  console.log(`  receiver busy (running, nothing to wake):   ${busy.toFixed(1)} us`);
  console.log(`FIGURE wake cost per post = ${(idle - busy).toFixed(1)} us (idle ${idle.toFixed(1)}, busy ${busy.toFixed(1)})`);
} else {
  const port = parentPort!;
  const { posts } = workerData as { posts: number };
  let spent = 0;
  let sent = 0;
  const tick = (): void => {
    const before = threadCpuNs();
    port.postMessage({ sent });
    spent += threadCpuNs() - before;
    if (++sent < posts) setTimeout(tick, 2);
    else port.postMessage({ meanUs: spent / posts / 1000 });
  };
  tick();
}
