/**
 * What one `postMessage` to another thread costs the SENDER in CPU, when the receiving thread
 * sleeps (its event loop idle: the message must wake it) and when it is busy (running: no
 * wake-up needed); and what waking from sleep costs the thread that wakes. Every message
 * between the main thread and the database's or the image thread is one such post.
 * BENCHMARKS.md 11I measured the sender with the counter read around each call, which on this
 * VM reports the time since the thread woke whenever the post gets it switched out; 11J reads
 * the thread's whole CPU over the run instead (both are printed).
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

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * This thread's CPU time so far, ns, read after a short sleep: exact then (the kernel brought
 * the counter up to date when the thread went to sleep); read while running, it can lag.
 */
async function settledCpuNs(): Promise<number> {
  await sleep(20);
  return threadCpuNs();
}

/** This thread's CPU time so far, ns. */
function threadCpuNs(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

/**
 * One run, with the main thread `busy` or idle: the worker's CPU per post, µs: `perPost` = the
 * thread's whole CPU over the run (each post with its timer turn) / posts; `bracketed` = the
 * counter read just before and after each `postMessage` call, summed.
 */
function run(busy: boolean): Promise<{ perPost: number; bracketed: number }> {
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
    worker.on('message', (message: { meanUs?: number; bracketedUs?: number }) => {
      if (message.meanUs === undefined || message.bracketedUs === undefined) return;
      spinning = false;
      void worker.terminate();
      resolve({ perPost: message.meanUs, bracketed: message.bracketedUs });
    });
    worker.on('error', reject);
  });
}

/**
 * What waking costs the thread that wakes: a worker's CPU per `setTimeout(1)` turn (it sleeps
 * and is woken each time) against per `setImmediate` turn (it never sleeps), µs, each the
 * thread's whole CPU over `turns` turns read after a sleep.
 */
function wakeCostOfTheWoken(turns: number): Promise<{ sleeping: number; running: number }> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL(import.meta.url), { workerData: { turns } });
    worker.on('message', (message: { sleeping: number; running: number }) => {
      void worker.terminate();
      resolve(message);
    });
    worker.on('error', reject);
  });
}

if (isMainThread) {
  if (process.platform !== 'linux') throw new Error('thread-wake reads /proc/thread-self/schedstat: Linux only');
  const idle = await run(false);
  const busy = await run(true);
  console.log(`thread-wake: ${POSTS} posts from a worker to the main thread, CPU of the sender per post (its timer turn included)`);
  console.log(`  receiver idle (asleep, woken by each post): ${idle.perPost.toFixed(1)} us (bracketed around the call: ${idle.bracketed.toFixed(1)})`);
  console.log(`  receiver busy (running, nothing to wake):   ${busy.perPost.toFixed(1)} us (bracketed around the call: ${busy.bracketed.toFixed(1)})`);
  console.log(`FIGURE wake cost per post = ${(idle.perPost - busy.perPost).toFixed(1)} us (idle ${idle.perPost.toFixed(1)}, busy ${busy.perPost.toFixed(1)})`);
  const woken = await wakeCostOfTheWoken(POSTS * 2);
  console.log(`  the woken thread: ${woken.sleeping.toFixed(1)} us CPU per turn that sleeps and is woken, ${woken.running.toFixed(1)} us per turn that does not sleep`);
  console.log(`FIGURE wake cost to the woken thread = ${(woken.sleeping - woken.running).toFixed(1)} us`);
  console.log(
    `  (bracketed: ${(idle.bracketed - busy.bracketed).toFixed(1)} us; a bracket read while the thread runs lags until the kernel next updates it, so the` +
      ` bracket catches the time since the thread woke whenever the post gets it switched out: not the post's own cost)`,
  );
} else if ((workerData as { turns?: number }).turns !== undefined) {
  const { turns } = workerData as { turns: number };
  let start = await settledCpuNs();
  for (let i = 0; i < turns; i++) await sleep(1);
  const sleeping = ((await settledCpuNs()) - start) / turns / 1000;
  start = await settledCpuNs();
  for (let i = 0; i < turns; i++) await new Promise((resolve) => setImmediate(resolve));
  parentPort!.postMessage({ sleeping, running: ((await settledCpuNs()) - start) / turns / 1000 });
} else {
  const port = parentPort!;
  const { posts } = workerData as { posts: number };
  let spent = 0;
  let sent = 0;
  const start = await settledCpuNs();
  const tick = (): void => {
    const before = threadCpuNs();
    port.postMessage({ sent });
    spent += threadCpuNs() - before;
    if (++sent < posts) setTimeout(tick, 2);
    else
      void settledCpuNs().then((end) => port.postMessage({ meanUs: (end - start) / posts / 1000, bracketedUs: spent / posts / 1000 }));
  };
  tick();
}
