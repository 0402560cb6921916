/**
 * Preloaded into a CLI process by the benchmarks (`node --import <this> dist/cli.js ...`):
 * at exit, writes the event loop's utilisation to the file named by `BENCH_ELU_FILE` (JSON:
 * over the process's life `activeMs`, `idleMs`, `utilization`, `cpuUserMs`, `cpuSystemMs`;
 * and `samples`, `[epochMs, activeMs, cpuMs]` every 50 ms, so a window of the run — the
 * provider's span — can be cut out). Busy main-thread ms divided by the images delivered is
 * the figure of issue 16's goal 2. Also the process's peak RSS (`maxRssKiB`, all threads) and
 * the main thread's highest `heapUsed` seen (`peakHeapUsedKiB`, sampled with the rest), for
 * goal 4. Nothing in the product reads it.
 */
import { writeFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

const file = process.env['BENCH_ELU_FILE'];
if (file) {
  const samples: [number, number, number][] = [];
  let peakHeapUsed = 0;
  const sample = () => {
    const cpu = process.cpuUsage();
    peakHeapUsed = Math.max(peakHeapUsed, process.memoryUsage().heapUsed);
    samples.push([performance.timeOrigin + performance.now(), performance.eventLoopUtilization().active, (cpu.user + cpu.system) / 1000]);
  };
  setInterval(sample, 50).unref();
  process.on('exit', () => {
    sample();
    const elu = performance.eventLoopUtilization();
    const cpu = process.cpuUsage();
    writeFileSync(file, JSON.stringify({ activeMs: elu.active, idleMs: elu.idle, utilization: elu.utilization, cpuUserMs: cpu.user / 1000, cpuSystemMs: cpu.system / 1000, maxRssKiB: process.resourceUsage().maxRSS, peakHeapUsedKiB: Math.round(peakHeapUsed / 1024), samples }));
  });
}
