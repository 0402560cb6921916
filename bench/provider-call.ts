/**
 * The Gemini adapter alone: main-thread time and CPU per call of `GeminiImageGenerator.generate`
 * against the Gemini-protocol server in its own process (latency 0), 10 calls in flight,
 * the answer's image checked as the adapter always does (base64 decode, PNG header). What
 * issue 16's goal 2 pays per delivered image for the provider, without the rest of the pipeline.
 *
 * Run: `npm run build && npm run bench:build && node dist-bench/bench/provider-call.js`
 * Env: BENCH_CALLS (1000 per round, 3 rounds after 300 warm-up calls), BENCH_IMAGE_SIZE (64; 1024 for large answers),
 * BENCH_PROVIDER_THREAD (`off`; `on`: the adapter in its own thread, `ThreadedImageGenerator`, as
 * `openPipeline` runs it; CPU is then the process's, both threads).
 */
import { performance } from 'node:perf_hooks';
import { firstValueFrom } from 'rxjs';
import { GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { ThreadedImageGenerator } from '../src/adapters/threaded-image-generator.js';
import type { GenerationRequest } from '../src/domain/ports.js';
import { spawnFakeServer } from './fake-server-process.js';
import { fmt, inputPng } from './support.js';

const num = (name: string, fallback: number) => (process.env[name] ? Number(process.env[name]) : fallback);
const CALLS = num('BENCH_CALLS', 1000);
const IMAGE_SIZE = num('BENCH_IMAGE_SIZE', 64);
const IN_FLIGHT = 10;
const THREAD = process.env['BENCH_PROVIDER_THREAD'] === 'on';

const server = await spawnFakeServer({ latencyMs: 0, imageSize: IMAGE_SIZE });
try {
  const settings = { apiKey: server.apiKey, baseUrl: server.url };
  const generator = THREAD ? new ThreadedImageGenerator({ gemini: settings }) : new GeminiImageGenerator(settings);
  const input = { bytes: (await inputPng()).bytes, mimeType: 'image/png' };
  const request = (slotIndex: number): GenerationRequest => ({
    jobId: 'bench', stageIndex: 0, slotIndex, attempt: 1, prompt: 'a bench image', aspectRatio: '1:1', inputAttachId: null, input,
  });
  const calls = async (count: number) => {
    let next = 0;
    await Promise.all(
      Array.from({ length: IN_FLIGHT }, async () => {
        while (next < count) await firstValueFrom(generator.generate(request(next++)));
      }),
    );
  };
  console.log(`the Gemini adapter alone${THREAD ? ' in its own thread' : ''}: ${IMAGE_SIZE} px answers, ${IN_FLIGHT} calls in flight, ${CALLS} calls per round`);
  await calls(300);
  for (let round = 1; round <= 3; round++) {
    const elu = performance.eventLoopUtilization();
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    await calls(CALLS);
    const busy = performance.eventLoopUtilization(elu).active;
    const used = process.cpuUsage(cpu);
    console.log(
      `  round ${round}: main thread ${fmt(busy / CALLS, 3)} ms/call, CPU ${fmt((used.user + used.system) / 1000 / CALLS, 3)} ms/call, wall ${fmt((performance.now() - t0) / CALLS, 3)} ms/call`,
    );
  }
  if (generator instanceof ThreadedImageGenerator) await generator.close();
} finally {
  await server.stop();
}
