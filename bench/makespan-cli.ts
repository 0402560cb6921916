/**
 * Issue 16, goal 1: the makespan as a user gets it, through the built CLI.
 *
 * `imagegen run job.json --json --concurrency 10` as a child process, the Gemini-protocol
 * server in another (`fake-server-process.ts`): 3 stages x 100 images, 300 ms per call,
 * 10% of the calls fail with a transient 5xx (seeded, a new seed per run), backoff base
 * 50 ms, stage concurrency 10 (the settings of figure 1, in process). The provider span is
 * measured by the server: from the first call's arrival to the start of the last answer.
 * Its bound is `ceil(calls / 10) x 300 ms` with the calls that were made; the ratio is the
 * figure. Also reported: the CLI process's wall time (start, database, the run, exit), and
 * (goal 2) its main thread's busy time per delivered image over the provider span, from
 * `performance.eventLoopUtilization()` sampled every 50 ms (`elu-probe.ts`, preloaded), and
 * its CPU time (all threads) over the same window.
 *
 * Run: `npm run build && npm run bench:build && node dist-bench/bench/makespan-cli.js`
 * (PGlite; with `DATABASE_URL=postgres://...` also PostgreSQL, a scratch database per run).
 * Env: BENCH_RUNS (5), BENCH_KINDS (`pglite,postgres`), BENCH_LATENCY_MS (300),
 * BENCH_FAILURE_RATE (0.1), BENCH_CONCURRENCY (10), BENCH_QUANTITY (100), BENCH_STAGES (3),
 * BENCH_CPU_PROF_DIR (unset: when set, the `run` process writes a `--cpu-prof` profile there),
 * BENCH_CLI (this build's `dist/cli.js`: another build's, to pair before and after),
 * BENCH_IMAGE_SIZE (the provider's default), BENCH_NODE_FLAGS (flags for node running the CLI); IMAGEGEN_PGLITE_THREAD, IMAGEGEN_IMAGE_THREAD, IMAGEGEN_PG_THREAD, UV_THREADPOOL_SIZE, VIPS_CONCURRENCY and GLIBC_TUNABLES are passed on to the CLI
 * (`off`: PGlite in the main thread). Each run also reports the `run` process's peak RSS and
 * its main thread's peak heapUsed (goal 4).
 *
 * Figure 4 through the CLI (10,000 images, an instant provider, 64 px, the default concurrency 8):
 * `BENCH_STAGES=10 BENCH_QUANTITY=1000 BENCH_LATENCY_MS=0 BENCH_FAILURE_RATE=0 BENCH_CONCURRENCY=8
 * BENCH_IMAGE_SIZE=64 BENCH_RUNS=1 BENCH_KINDS=pglite node dist-bench/bench/makespan-cli.js`
 * (its makespan ratio means nothing at 0 ms).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnFakeServer } from './fake-server-process.js';
import { inputPng, scratchPostgres } from './support.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The built CLI to run (`BENCH_CLI`: another build's `dist/cli.js`, for paired before/after runs). */
const CLI = process.env['BENCH_CLI'] ?? join(ROOT, 'dist', 'cli.js');
const ELU_PROBE = join(ROOT, 'dist-bench', 'bench', 'elu-probe.js');
const num = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);

const RUNS = num('BENCH_RUNS', 5);
const LATENCY_MS = num('BENCH_LATENCY_MS', 300);
const FAILURE_RATE = num('BENCH_FAILURE_RATE', 0.1);
const CONCURRENCY = num('BENCH_CONCURRENCY', 10);
const QUANTITY = num('BENCH_QUANTITY', 100);
const STAGES = num('BENCH_STAGES', 3);
/** The fake provider's image size (long side, px); unset = its default. Figure 4 through the CLI uses 64. */
const IMAGE_SIZE = process.env['BENCH_IMAGE_SIZE'] ? num('BENCH_IMAGE_SIZE', 0) : undefined;
/** Flags for node running the CLI, e.g. `--heap-growing-percent=0` (V8's own heap growing, as before the CLI set it). */
const NODE_FLAGS = (process.env['BENCH_NODE_FLAGS'] ?? '').split(/\s+/).filter(Boolean);
const DATABASE_URL = process.env['DATABASE_URL'];
/** When set, the `run` process writes a V8 CPU profile there (`--cpu-prof`). */
const PROFILE_DIR = process.env['BENCH_CPU_PROF_DIR'];
const KINDS = (process.env['BENCH_KINDS'] ?? 'pglite,postgres').split(',').filter((k) => k === 'pglite' || (k === 'postgres' && DATABASE_URL));

interface RunFigures {
  readonly calls: number;
  readonly spanMs: number;
  readonly boundMs: number;
  readonly ratio: number;
  readonly wallMs: number;
  readonly delivered: number;
  /** The run process's main-thread busy time (event loop utilisation), ms per delivered image. */
  readonly mainThreadMsPerImage: number;
  /** The ELU probe's own sampling over the window, ms per image (taken out of the two main-thread figures). */
  readonly probeMsPerImage: number;
  /** The main thread's own CPU time (what of its busy time it ran on a core), ms per delivered image; NaN without /proc. */
  readonly mainThreadCpuMsPerImage: number;
  /** Its CPU time (all threads: sharp's and PGlite's included), ms per delivered image. */
  readonly cpuMsPerImage: number;
  /** The run process's peak RSS (all threads) and its main thread's highest heapUsed, MiB. */
  readonly maxRssMiB: number;
  readonly peakHeapUsedMiB: number;
}

function cli(args: readonly string[], env: NodeJS.ProcessEnv, profileDir?: string): Promise<{ code: number | null; stdout: string; stderr: string; wallMs: number }> {
  const started = performance.now();
  const profile = profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : [];
  const child = spawn(process.execPath, [...NODE_FLAGS, ...profile, '--import', ELU_PROBE, CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((done) => child.once('close', (code) => done({ code, stdout, stderr, wallMs: performance.now() - started })));
}

async function runOnce(kind: 'pglite' | 'postgres', seed: number): Promise<RunFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'imagegen-mkcli-'));
  const server = await spawnFakeServer({ latencyMs: LATENCY_MS, failureRate: FAILURE_RATE, failureClasses: ['status:503', 'status:500'], seed, ...(IMAGE_SIZE ? { imageSize: IMAGE_SIZE } : {}) });
  const database = kind === 'postgres' ? await scratchPostgres(DATABASE_URL!) : null;
  let stopped = false;
  try {
    await writeFile(join(dir, 'input.png'), (await inputPng()).bytes);
    const stages = Array.from({ length: STAGES }, (_, i) => ({ prompt: `stage ${i}`, quantity: QUANTITY, 'aspect-ratio': '1:1', inputImage: 'input.png' }));
    await writeFile(join(dir, 'job.json'), JSON.stringify({ jobId: `mkcli-${seed}`, userId: 'bench', stages }));
    const env: NodeJS.ProcessEnv = {
      PATH: process.env['PATH'],
      HOME: process.env['HOME'],
      ...(process.env['XDG_CACHE_HOME'] ? { XDG_CACHE_HOME: process.env['XDG_CACHE_HOME'] } : {}),
      // The thread switches (IMAGEGEN_PGLITE_THREAD, IMAGEGEN_IMAGE_THREAD, IMAGEGEN_PG_THREAD) and
      // the native thread pools' sizes (libuv's, libvips's) and glibc's tunables (what `bin/imagegen`
      // sets: GLIBC_TUNABLES=glibc.malloc.hugetlb=1) as given.
      ...Object.fromEntries(Object.entries(process.env).filter(([name]) => /^(IMAGEGEN_[A-Z_]*THREAD|UV_THREADPOOL_SIZE|VIPS_CONCURRENCY|GLIBC_TUNABLES)$/.test(name))),
      IMAGEGEN_PROVIDER: 'gemini',
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      IMAGEGEN_STAGE_CONCURRENCY: String(CONCURRENCY),
      IMAGEGEN_BACKOFF_BASE_MS: '50',
      IMAGEGEN_BACKOFF_MAX_MS: '2000',
      IMAGEGEN_MAX_ATTEMPTS_PER_SLOT: '10',
      IMAGEGEN_LOG_LEVEL: 'warn',
      ...(database ? { DATABASE_URL: database.url } : { IMAGEGEN_DATA_DIR: join(dir, 'data') }),
    };
    const granted = await cli(['credits', 'grant', 'bench', String(STAGES * QUANTITY)], env);
    if (granted.code !== 0) throw new Error(`credits grant failed: ${granted.stderr}`);
    const eluFile = join(dir, 'elu.json');
    const ran = await cli(['run', join(dir, 'job.json'), '--json', '--concurrency', String(CONCURRENCY)], { ...env, BENCH_ELU_FILE: eluFile }, PROFILE_DIR);
    if (ran.code !== 0) throw new Error(`run failed (${ran.code}): ${ran.stderr.slice(-2000)}`);
    const summary = JSON.parse(ran.stdout) as { deliveredImages: number };
    stopped = true;
    const { calls, spanMs, firstArrivalEpochMs, lastAnswerEpochMs } = await server.stopWithSpan();
    const boundMs = Math.ceil(calls / CONCURRENCY) * LATENCY_MS;
    const elu = JSON.parse(await readFile(eluFile, 'utf8')) as { samples: [number, number, number, number, number?][]; maxRssKiB: number; peakHeapUsedKiB: number };
    const delivered = summary.deliveredImages;
    // The run's window: the provider's span (start-up and exit left out), from the 50 ms samples.
    const at = (epochMs: number) => elu.samples.find((s) => s[0] >= epochMs) ?? elu.samples.at(-1)!;
    const [, activeStart, cpuStart, mainCpuStart, probeStart = 0] = at(firstArrivalEpochMs);
    const [, activeEnd, cpuEnd, mainCpuEnd, probeEnd = 0] = at(lastAnswerEpochMs);
    // The probe's own sampling is the benchmark's, not the CLI's: taken out of the main thread's figures.
    const probeMs = probeEnd - probeStart;
    return {
      calls,
      spanMs,
      boundMs,
      ratio: spanMs / boundMs,
      wallMs: ran.wallMs,
      delivered,
      mainThreadMsPerImage: (activeEnd - activeStart - probeMs) / delivered,
      probeMsPerImage: probeMs / delivered,
      mainThreadCpuMsPerImage: mainCpuStart < 0 ? Number.NaN : (mainCpuEnd - mainCpuStart - probeMs) / delivered,
      cpuMsPerImage: (cpuEnd - cpuStart) / delivered,
      maxRssMiB: elu.maxRssKiB / 1024,
      peakHeapUsedMiB: elu.peakHeapUsedKiB / 1024,
    };
  } finally {
    if (!stopped) await server.stop().catch(() => 0);
    await database?.drop();
    await rm(dir, { recursive: true, force: true });
  }
}

const median = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

console.log(`makespan through the CLI: ${STAGES} x ${QUANTITY}, ${LATENCY_MS} ms, p = ${FAILURE_RATE}, --concurrency ${CONCURRENCY}; ${RUNS} runs per database`);
if (!DATABASE_URL) console.log('PostgreSQL skipped: DATABASE_URL not set');
for (const kind of KINDS as ('pglite' | 'postgres')[]) {
  const ratios: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const f = await runOnce(kind, 100 + i);
    ratios.push(f.ratio);
    console.log(
      `${kind} run ${i + 1}: ${f.delivered} images, ${f.calls} calls, provider span ${(f.spanMs / 1000).toFixed(2)} s, bound ${(f.boundMs / 1000).toFixed(1)} s, ratio ${f.ratio.toFixed(3)}; CLI wall ${(f.wallMs / 1000).toFixed(2)} s; main thread ${f.mainThreadMsPerImage.toFixed(2)} ms/image (on a core ${f.mainThreadCpuMsPerImage.toFixed(2)}; the probe's own ${f.probeMsPerImage.toFixed(2)} taken out), CPU ${f.cpuMsPerImage.toFixed(2)} ms/image (over the provider span); peak RSS ${f.maxRssMiB.toFixed(1)} MiB, peak heapUsed ${f.peakHeapUsedMiB.toFixed(1)} MiB`,
    );
  }
  console.log(`${kind}: median ratio ${median(ratios).toFixed(3)} (runs ${ratios.map((r) => r.toFixed(3)).join(', ')})`);
}
