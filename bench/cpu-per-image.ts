/**
 * Figure 3: CPU per delivered image, ours vs bare sharp PNG->WebP on the same images,
 * in the same process and run (`process.cpuUsage()`: user + system of every thread,
 * libvips and PGlite included).
 *
 * A. Gemini protocol (the headline): the local Gemini-protocol server in a child
 *    process (its rendering is not counted), latency 0, 1024x1024 PNGs (aspect 1:1),
 *    read by the real GeminiImageGenerator. Bare sharp converts the same PNGs
 *    (re-rendered byte-identical from their stamps before the clock starts).
 * B. In-process instant provider with photo-like 1024x1024 PNGs (gradient + noise,
 *    8 distinct, cycled): no HTTP, no JSON; bare sharp converts the same byte arrays.
 *
 * Ours is also split by thread (`cpuByThread`, Linux): the main thread, the database
 * thread, libuv's pool and V8's workers (`node#<id>`), sharp's `libvips` workers; bare sharp
 * too, so the two splits side by side show where the overhead sits. Beside them: each side's
 * system (kernel) time, minor page faults and context switches per image (by thread), the
 * prices this VM charges most for (BENCHMARKS.md 11K, 11L).
 *
 * Both sides run with the same parallelism (BENCH_CONCURRENCY, default 4 = global and
 * stage limit for ours, lanes for bare sharp) and WebP quality 80. Each side is warmed
 * up first (BENCH_WARM images, default one round's: V8 keeps optimising our per-image code
 * for the first few hundred images, BENCHMARKS.md 11J). Each variant runs BENCH_ROUNDS rounds
 * (5), ours then bare sharp on the same images in each, and its figure is the median of the
 * rounds' ratios: on a shared 2-core machine one pair of runs moved by 0.2 from one run to the
 * next (BENCHMARKS.md 11H). Beside it, the median with libvips's CPU taken as bare sharp's
 * (the overhead around the codec, without the codec's own swings).
 * Env: BENCH_IMAGES (120), BENCH_WARM (BENCH_IMAGES), BENCH_ROUNDS (5), BENCH_STAGES (3), BENCH_VARIANT (A | B | AB),
 * IMAGEGEN_IMAGE_THREAD (unset: the adapter (A) and the codec in the image thread, as `openPipeline`
 * runs them; `off`: in the main thread, as before 11F).
 */
import { createHash } from 'node:crypto';
import sharp from 'sharp';
import { GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { ThreadedImageGenerator } from '../src/adapters/threaded-image-generator.js';
import { ImageThread } from '../src/adapters/image-thread-link.js';
import { loadConfig } from '../src/config.js';
import { renderStampedPng } from '../test/support/stamped-image.js';
import { toWebp } from '../src/adapters/image-codec.js';
import { spawnFakeServer } from './fake-server-process.js';
import { InstantImageGenerator, cpuByThread, cpuOutsideLibvips, cpuByThreadPerImage, fmt, switchesByThread, switchesPerImage, openBenchPipeline, photoLikePngs, pool, runOurs, type BenchPipeline } from './support.js';
import type { ImageGenerator } from '../src/domain/ports.js';

const num = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);
const IMAGES = num('BENCH_IMAGES', 120);
const STAGES = num('BENCH_STAGES', 3);
const CONCURRENCY = num('BENCH_CONCURRENCY', 4);
const VARIANT = process.env['BENCH_VARIANT'] ?? 'AB';
const ROUNDS = num('BENCH_ROUNDS', 5);
// V8's optimising compiler keeps compiling our per-image code (three isolates) for the first few
// hundred images: without a warm-up of that size a 120-image round measures the JIT (11J).
const WARM = num('BENCH_WARM', IMAGES);
const QUALITY = 80;

const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;

interface Side {
  readonly cpu: number;
  /** The kernel's part of {@link cpu} (system time), ms. */
  readonly system: number;
  readonly wall: number;
  readonly threads: string;
  /** CPU of every thread but libvips's workers, ms. */
  readonly outside: number;
  /** Minor page faults of the process (every thread): on a PVM guest each costs ~10 us (BENCHMARKS.md 11K). */
  readonly faults: number;
  /** Context switches per image by thread (voluntary/involuntary) and in all: each sleep and wake-up of a thread costs it CPU (11L). */
  readonly switches: ReturnType<typeof switchesPerImage>;
}

/** One side's run of `images` images (`work`), measured: the process's CPU, its split by thread, wall time, page faults, context switches. */
async function measured<T>(images: number, work: () => Promise<T>): Promise<Side & { readonly value: T }> {
  const before = process.cpuUsage();
  const faultsBefore = process.resourceUsage().minorPageFault;
  const threadsBefore = cpuByThread();
  const switchesBefore = switchesByThread();
  const t0 = performance.now();
  const value = await work();
  const usage = process.cpuUsage(before);
  const cpu = cpuMs(usage);
  const faults = process.resourceUsage().minorPageFault - faultsBefore;
  const threadsAfter = cpuByThread();
  const switches = switchesPerImage(switchesBefore, switchesByThread(), images);
  const threads = cpuByThreadPerImage(threadsBefore, threadsAfter, images);
  return { cpu, system: usage.system / 1000, wall: performance.now() - t0, threads, outside: cpuOutsideLibvips(threadsBefore, threadsAfter), faults, switches, value };
}

async function cpuOfOurs(pipeline: BenchPipeline, images: number) {
  const perStage = Math.floor(images / STAGES);
  const stages = Array.from({ length: STAGES }, (_, i) => ({ quantity: perStage + (i < images % STAGES ? 1 : 0), aspectRatio: '1:1' }));
  const side = await measured(images, () => runOurs(pipeline, stages, { stageConcurrency: CONCURRENCY, webpQuality: QUALITY, attemptTimeoutMs: 60_000 }));
  const delivered = side.value.result.deliveredImages;
  if (delivered !== images) throw new Error(`ours delivered ${delivered}/${images}`);
  return { ...side, delivered };
}

function cpuOfBareSharp(pngs: readonly Uint8Array[]): Promise<Side> {
  return measured(pngs.length, () =>
    pool(pngs, CONCURRENCY, async (png) => {
      await sharp(png).webp({ quality: QUALITY }).toBuffer();
    }),
  );
}

/** The library's own codec step (probe + full decode + auto-orient + WebP) on the same images: splits codec cost from the rest. */
async function cpuOfToWebp(pngs: readonly Uint8Array[]) {
  const before = process.cpuUsage();
  await pool(pngs, CONCURRENCY, async (png) => {
    await toWebp(png, { quality: QUALITY });
  });
  return cpuMs(process.cpuUsage(before));
}

const middle = (values: readonly number[]) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length / 2;
  return sorted.length % 2 === 1 ? sorted[Math.floor(mid)]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
};

interface RoundRatios {
  /** Ours / bare sharp, CPU of the whole process: the figure. */
  readonly ratio: number;
  /** 1 + (ours - bare sharp outside libvips's workers) / bare sharp: the same overhead without the codec's own swings. */
  readonly outsideCodec: number;
}

/**
 * The figure: the median of the rounds' ratios (ours and bare sharp alternate, so a slow minute
 * weighs on both). Beside it, the same with the codec's CPU taken as equal on both sides: the
 * libvips work is the same conversion (`toWebp` alone costs what bare sharp does), but on this
 * VM its CPU per image swings by 10-20% from one run to the next, more than the overhead measured.
 */
function median(variant: string, rounds: readonly RoundRatios[]): number {
  const value = middle(rounds.map((r) => r.ratio));
  console.log(`FIGURE 3${variant} median of ${rounds.length} rounds = ${fmt(value, 3)} (rounds ${rounds.map((r) => fmt(r.ratio, 3)).join(', ')})`);
  console.log(`  3${variant} outside the codec (libvips's CPU taken as bare sharp's): median ${fmt(middle(rounds.map((r) => r.outsideCodec)), 3)} (rounds ${rounds.map((r) => fmt(r.outsideCodec, 3)).join(', ')})`);
  return value;
}

function report(name: string, ours: Side & { delivered: number }, bare: Side, count: number, codec: number | undefined): RoundRatios {
  const oursPer = ours.cpu / ours.delivered;
  const barePer = bare.cpu / count;
  console.log(`${name}:`);
  console.log(`  ours: ${ours.delivered} images, CPU ${fmt(ours.cpu, 0)} ms (${fmt(oursPer, 1)} ms/image, system ${fmt(ours.system / ours.delivered, 1)}), wall ${fmt(ours.wall, 0)} ms, ${fmt(ours.faults / ours.delivered, 0)} minor page faults/image`);
  if (ours.threads) console.log(`  ours by thread, ms/image: ${ours.threads} (node#<id>: the database thread, libuv's pool and V8's workers)`);
  if (ours.switches.words) console.log(`  ours context switches/image, voluntary/involuntary: ${fmt(ours.switches.voluntary, 1)}/${fmt(ours.switches.involuntary, 1)}: ${ours.switches.words}`);
  console.log(`  bare sharp PNG->WebP: ${count} images, CPU ${fmt(bare.cpu, 0)} ms (${fmt(barePer, 1)} ms/image, system ${fmt(bare.system / count, 1)}), wall ${fmt(bare.wall, 0)} ms, ${fmt(bare.faults / count, 0)} minor page faults/image`);
  if (bare.threads) console.log(`  bare sharp by thread, ms/image: ${bare.threads}`);
  if (bare.switches.words) console.log(`  bare sharp context switches/image, voluntary/involuntary: ${fmt(bare.switches.voluntary, 1)}/${fmt(bare.switches.involuntary, 1)}: ${bare.switches.words}`);
  if (codec !== undefined) console.log(`  library toWebp() alone on the same images: ${fmt(codec / count, 1)} ms/image = ${fmt(codec / count / barePer, 3)} x bare sharp; the rest of ours (HTTP/JSON, PGlite transactions, events, file writes): ${fmt(oursPer - codec / count, 1)} ms/image`);
  const outsidePer = ours.outside / ours.delivered - bare.outside / count;
  console.log(`  3${name.slice(0, 1)} CPU per delivered image ours / bare sharp = ${fmt(oursPer / barePer, 3)} (overhead ${fmt(oursPer - barePer, 1)} ms/image; outside libvips ${fmt(outsidePer, 1)} ms/image)`);
  return { ratio: oursPer / barePer, outsideCodec: 1 + outsidePer / barePer };
}

async function variantA() {
  const server = await spawnFakeServer({ latencyMs: 0, imageSize: 1024 });
  const settings = { apiKey: server.apiKey, baseUrl: server.url, timeoutMs: 60_000 };
  // As openPipeline runs it: in the image thread (shared with the codec) unless IMAGEGEN_IMAGE_THREAD=off.
  const threaded = loadConfig(process.env).imageThread !== false ? new ImageThread({ gemini: settings }) : undefined;
  const generator: ImageGenerator = threaded ? new ThreadedImageGenerator({ thread: threaded }) : new GeminiImageGenerator(settings);
  const pipeline = await openBenchPipeline({ generator, globalConcurrency: CONCURRENCY, credits: ROUNDS * IMAGES + WARM + 20, imageThread: threaded ?? null });
  try {
    // Warm-up (JIT, sharp, SDK, PGlite plans): a job of WARM images, not measured. Calls 1..WARM.
    await cpuOfOurs(pipeline, WARM);
    const render = async (from: number, count: number) => {
      const pngs: Uint8Array[] = [];
      for (let n = from; n < from + count; n++) pngs.push(await renderStampedPng({ stamp: n, width: 1024, height: 1024 }));
      return pngs;
    };
    await cpuOfBareSharp(await render(1, WARM));
    const ratios: RoundRatios[] = [];
    for (let round = 1, next = WARM + 1; round <= ROUNDS; round++, next += IMAGES) {
      const ours = await cpuOfOurs(pipeline, IMAGES);
      // The server stamps each image with its call number: calls next..next+IMAGES-1 were this round's.
      const pngs = await render(next, IMAGES);
      const bare = await cpuOfBareSharp(pngs);
      // The library's codec step alone, once (it only splits the codec's cost from the rest).
      const codec = round === 1 ? await cpuOfToWebp(pngs) : undefined;
      if (round === 1) {
        const meta = await sharp(pngs[0]!).metadata();
        console.log(`  (PNGs ${meta.width}x${meta.height}, ${fmt(pngs.reduce((n, p) => n + p.byteLength, 0) / pngs.length / 1024, 1)} KiB each, sha256 of the first ${createHash('sha256').update(pngs[0]!).digest('hex').slice(0, 12)})`);
      }
      ratios.push(report(`A (Gemini protocol, stamped 1024x1024 PNGs${threaded ? ', the image thread' : ''}), round ${round}`, ours, bare, pngs.length, codec));
    }
    console.log(`  (server calls ${await server.stop()})`);
    return median('A', ratios);
  } finally {
    await pipeline.close();
    await threaded?.close();
  }
}

async function variantB() {
  const images = await photoLikePngs(8, 1024, 1024);
  const generator = new InstantImageGenerator(images);
  const pipeline = await openBenchPipeline({ generator, globalConcurrency: CONCURRENCY, credits: ROUNDS * IMAGES + WARM + 20 });
  try {
    await cpuOfOurs(pipeline, WARM);
    await cpuOfBareSharp(images);
    console.log(`  (photo-like PNGs 1024x1024, ${fmt(images.reduce((n, p) => n + p.byteLength, 0) / images.length / 1024, 0)} KiB each)`);
    const ratios: RoundRatios[] = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const first = generator.calls;
      const ours = await cpuOfOurs(pipeline, IMAGES);
      const served = Array.from({ length: generator.calls - first }, (_, k) => images[(first + k) % images.length]!);
      const bare = await cpuOfBareSharp(served);
      const codec = round === 1 ? await cpuOfToWebp(served) : undefined;
      ratios.push(report(`B (in-process instant provider, photo-like 1024x1024 PNGs), round ${round}`, ours, bare, served.length, codec));
    }
    return median('B', ratios);
  } finally {
    await pipeline.close();
  }
}

console.log(`CPU per image: ${IMAGES} images in ${STAGES} stages, concurrency ${CONCURRENCY}, WebP quality ${QUALITY}, ${process.env['UV_THREADPOOL_SIZE'] ?? 4} libuv threads, sharp concurrency ${sharp.concurrency()}`);
if (VARIANT.includes('A')) await variantA();
if (VARIANT.includes('B')) await variantB();
