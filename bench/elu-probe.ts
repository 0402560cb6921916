/**
 * Preloaded into a CLI process by the benchmarks (`node --import <this> dist/cli.js ...`):
 * at exit, writes the event loop's utilisation to the file named by `BENCH_ELU_FILE` (JSON:
 * over the process's life `activeMs`, `idleMs`, `utilization`, `cpuUserMs`, `cpuSystemMs`;
 * and `samples`, `[epochMs, activeMs, cpuMs]` every 50 ms, so a window of the run — the
 * provider's span — can be cut out). Busy main-thread ms divided by the images delivered is
 * the figure of issue 16's goal 2. Also the process's peak RSS (`maxRssKiB`, all threads) and
 * the main thread's highest `heapUsed` seen (`peakHeapUsedKiB`, sampled with the rest), for
 * goal 4. Each sample also holds the main thread's own CPU time (`/proc/self/task/<pid>/stat`,
 * utime + stime, 10 ms ticks; -1 where /proc is not there): the event loop's busy time
 * counts a callback's wall time, including the time the thread waited for a core (on a busy
 * 2-core machine, every wake-up of another thread — a message to a worker, a task for libuv's
 * pool, a write to the database's socket — can cost the waker its core for a while).
 * The probe's own sampling (process-wide `cpuUsage` sums every thread's time: on this VM a
 * call took ~0.1 ms) is timed too: each sample's fifth field is the probe's own ms so far,
 * which the benchmark takes out of the main thread's figures (it prints both).
 * Nothing in the product reads it.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const file = process.env['BENCH_ELU_FILE'];
if (file) {
  const samples: [number, number, number, number, number][] = [];
  let probeMs = 0;
  const mainThreadStat = `/proc/self/task/${process.pid}/stat`;
  const mainThreadCpuMs = () => {
    try {
      // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
      const fields = readFileSync(mainThreadStat, 'utf8').split(') ')[1]!.split(' ');
      return (Number(fields[11]) + Number(fields[12])) * 10;
    } catch {
      return -1;
    }
  };
  let peakHeapUsed = 0;
  const sample = () => {
    const t0 = performance.now();
    const cpu = process.cpuUsage();
    peakHeapUsed = Math.max(peakHeapUsed, process.memoryUsage().heapUsed);
    const mainCpu = mainThreadCpuMs();
    probeMs += performance.now() - t0;
    samples.push([performance.timeOrigin + performance.now(), performance.eventLoopUtilization().active, (cpu.user + cpu.system) / 1000, mainCpu, probeMs]);
  };
  setInterval(sample, 50).unref();
  process.on('exit', () => {
    sample();
    const elu = performance.eventLoopUtilization();
    const cpu = process.cpuUsage();
    writeFileSync(file, JSON.stringify({ activeMs: elu.active, idleMs: elu.idle, utilization: elu.utilization, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000, maxRssKiB: process.resourceUsage().maxRSS, peakHeapUsedKiB: Math.round(peakHeapUsed / 1024), samples }));
  });
}
