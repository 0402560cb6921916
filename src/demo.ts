/**
 * `npm run demo`: a real job, offline, on the embedded defaults. PGlite in
 * `./.imagegen/db`, folder storage in `./.imagegen/storage`, the offline generator
 * with 20% injected transient failures (so retries show), demo credits granted
 * first. Exits like `imagegen run`. Both commands share one pipeline (one database start).
 *
 * The demo's settings are presets under the environment (a variable you set wins),
 * given to `loadConfig` and to the CLI as one environment: the demo never reads or
 * writes the process environment (only src/config.ts reads it).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import sharp from 'sharp';
import { main, type MainHooks } from './cli/main.js';
import { beforeOwnDatabase, tuneOwnProcess } from './cli/own-process.js';
import { openPipeline, type Pipeline } from './pipeline.js';
import { reportError } from './cli/failures.js';
import { envWithPresets, loadConfig } from './config.js';

// Our own process: settings the library leaves to its host (see src/cli/own-process.ts).
tuneOwnProcess();

const env = envWithPresets({
  IMAGEGEN_OFFLINE_FAILURE_RATE: '0.2',
  IMAGEGEN_OFFLINE_LATENCY_MS: '150',
  IMAGEGEN_OFFLINE_JITTER_MS: '150',
  IMAGEGEN_OFFLINE_SEED: String(Date.now() % 100_000),
  IMAGEGEN_BACKOFF_BASE_MS: '200',
  IMAGEGEN_PROVIDER: 'offline',
});

/** Writes the input image and the job file, then grants the credits and runs the job as `imagegen run` does. */
async function demo(): Promise<number> {
  let dataDir: string;
  try {
    dataDir = loadConfig(env).dataDir;
  } catch (error) {
    // A bad variable: the one line (exit 2) the CLI would print, before anything is written.
    return reportError(error, { json: false, debug: false, storage: undefined });
  }
  const demoDir = join(dataDir, 'demo');
  mkdirSync(demoDir, { recursive: true });
  const input = join(demoDir, 'input.png');
  await sharp({
    create: { width: 768, height: 512, channels: 3, background: { r: 40, g: 90, b: 160 } },
  })
    .composite([{ input: Buffer.from('<svg width="768" height="512"><circle cx="384" cy="256" r="160" fill="#f5c542"/></svg>'), top: 0, left: 0 }])
    .png()
    .toFile(input);

  const jobId = `demo-${new Date().toISOString().replace(/[^0-9]/g, '').slice(0, 14)}`;
  const job = {
    jobId,
    userId: 'demo-user',
    productionId: 'demo',
    stages: [
      { quantity: 8, prompt: 'the same scene at golden hour', 'aspect-ratio': '16:9', inputImage: 'input.png' },
      { quantity: 8, prompt: 'the same scene as a watercolour', 'aspect-ratio': '1:1', inputImage: 'input.png' },
      { quantity: 8, prompt: 'the same scene at night', 'aspect-ratio': '9:16', inputImage: 'input.png' },
    ],
  };
  const jobFile = join(demoDir, `${jobId}.json`);
  writeFileSync(jobFile, JSON.stringify(job, null, 2));
  process.stderr.write(`demo: job file ${jobFile}\ndemo: images will be in ${join(dataDir, 'storage', 'generated', jobId)}\n`);

  // Both commands run on one pipeline, opened by the first: the embedded database starts once.
  let shared: Promise<Pipeline> | undefined;
  const hooks: MainHooks = {
    beforeDatabase: beforeOwnDatabase,
    openPipeline: async (config) => {
      shared ??= openPipeline(config);
      // Each command closes what it opened: the lent one stays open until the demo ends.
      return { ...(await shared), close: async () => {} };
    },
  };
  try {
    const granted = await main(['credits', 'grant', 'demo-user', '24'], env, hooks);
    return granted === 0 ? await main(['run', jobFile], env, hooks) : granted;
  } finally {
    await (await shared?.catch(() => undefined))?.close();
  }
}

const code = await demo();
process.exitCode = code;
setTimeout(() => process.exit(code), 3000).unref();
