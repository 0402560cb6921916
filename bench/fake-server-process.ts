/**
 * The local Gemini-protocol server in a process of its own, so the CPU it spends
 * rendering PNGs and the memory its call records hold are not counted against the
 * pipeline under test. Used by the CPU and RSS benchmarks.
 *
 * Child:  node dist-bench/bench/fake-server-process.js '{"latencyMs":0,"imageSize":1024}'
 *         prints `READY <url> <apiKey>`; on SIGTERM (or stdin closing) prints `CALLS <n>` and exits.
 * Parent: {@link spawnFakeServer}.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { startFakeGeminiServer, type FakeGeminiServerOptions } from '../test/support/fake-gemini-server.js';

export interface FakeServerProcess {
  readonly url: string;
  readonly apiKey: string;
  /** Stops the server process; resolves with the number of calls it received. */
  stop(): Promise<number>;
}

/** Starts the fake server in a child process (plain JSON options: latency, image size). */
export function spawnFakeServer(options: Pick<FakeGeminiServerOptions, 'latencyMs' | 'imageSize' | 'apiKey'>): Promise<FakeServerProcess> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  return new Promise((resolve, reject) => {
    let calls: ((n: number) => void) | undefined;
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`fake server process exited with ${code}`)));
    lines.on('line', (line) => {
      const [word, a, b] = line.split(' ');
      if (word === 'READY') {
        resolve({
          url: a!,
          apiKey: b!,
          stop: () =>
            new Promise<number>((done) => {
              calls = done;
              child.kill('SIGTERM');
            }),
        });
      } else if (word === 'CALLS') calls?.(Number(a));
    });
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const options = JSON.parse(process.argv[2] ?? '{}') as FakeGeminiServerOptions;
  const server = await startFakeGeminiServer(options);
  // Records of every call would grow with the run; this process is not measured, but keep it lean anyway.
  const records = server.requests as unknown as unknown[];
  const trim = setInterval(() => records.splice(0, Math.max(0, records.length - 100)), 1000);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(trim);
    const calls = server.calls();
    await server.close();
    process.stdout.write(`CALLS ${calls}\n`, () => process.exit(0));
  };
  process.on('SIGTERM', () => void stop());
  process.stdin.on('end', () => void stop());
  process.stdin.resume();
  process.stdout.write(`READY ${server.url} ${server.apiKey}\n`);
}
