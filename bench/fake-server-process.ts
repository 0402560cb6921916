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
import { randomMixBehavior, startFakeGeminiServer, type FakeBehavior, type FakeCallRecord, type FakeGeminiServerOptions } from '../test/support/fake-gemini-server.js';

export interface FakeServerProcess {
  readonly url: string;
  readonly apiKey: string;
  /** Stops the server process; resolves with the number of calls it received. */
  stop(): Promise<number>;
  /**
   * Stops it; resolves with the calls and the provider span: ms from the first call's
   * arrival to the start of the last answer (the server's clock).
   */
  stopWithSpan(): Promise<ProviderSpan>;
}

/** The calls a server process received and when: epoch ms of the first arrival and of the last answer's start. */
export interface ProviderSpan {
  readonly calls: number;
  readonly spanMs: number;
  readonly firstArrivalEpochMs: number;
  readonly lastAnswerEpochMs: number;
}

/** Plain-JSON options of the child: latency, image size, and a seeded share of failures. */
export type FakeServerProcessOptions = Pick<FakeGeminiServerOptions, 'latencyMs' | 'imageSize' | 'apiKey'> & {
  /** Share of calls that fail with one of `failureClasses` (`randomMixBehavior`). Default 0. */
  readonly failureRate?: number;
  readonly failureClasses?: readonly FakeBehavior[];
  readonly seed?: number;
};

/** Starts the fake server in a child process (plain JSON options: latency, image size). */
export function spawnFakeServer(options: FakeServerProcessOptions): Promise<FakeServerProcess> {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), JSON.stringify(options)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout! });
  return new Promise((resolve, reject) => {
    let calls: ((result: ProviderSpan) => void) | undefined;
    const stopping = () =>
      new Promise<ProviderSpan>((done) => {
        calls = done;
        child.kill('SIGTERM');
      });
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`fake server process exited with ${code}`)));
    lines.on('line', (line) => {
      const [word, a, b, c, d] = line.split(' ');
      if (word === 'READY') {
        resolve({
          url: a!,
          apiKey: b!,
          stop: async () => (await stopping()).calls,
          stopWithSpan: stopping,
        });
      } else if (word === 'CALLS') calls?.({ calls: Number(a), spanMs: Number(b), firstArrivalEpochMs: Number(c), lastAnswerEpochMs: Number(d) });
    });
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { failureRate, failureClasses, seed, ...options } = JSON.parse(process.argv[2] ?? '{}') as FakeServerProcessOptions;
  const behavior = failureRate ? randomMixBehavior({ seed: seed ?? 1, failureRate, ...(failureClasses ? { classes: failureClasses } : {}) }) : undefined;
  const server = await startFakeGeminiServer({ ...options, ...(behavior ? { behavior } : {}) });
  // Records of every call would grow with the run; this process is not measured, but keep it
  // lean anyway: the span's ends are kept as the records go.
  const records = server.requests as unknown as FakeCallRecord[];
  let firstArrival = Infinity;
  let lastAnswer = -Infinity;
  const note = (list: readonly FakeCallRecord[]) => {
    for (const r of list) {
      firstArrival = Math.min(firstArrival, r.arrivedAt);
      if (r.answeredAt !== undefined) lastAnswer = Math.max(lastAnswer, r.answeredAt);
    }
  };
  const trim = setInterval(() => note(records.splice(0, Math.max(0, records.length - 100))), 1000);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(trim);
    note(records);
    const calls = server.calls();
    await server.close();
    const spanMs = calls > 0 ? lastAnswer - firstArrival : 0;
    const epoch = (t: number) => (Number.isFinite(t) ? (performance.timeOrigin + t).toFixed(1) : '0');
    process.stdout.write(`CALLS ${calls} ${spanMs.toFixed(1)} ${epoch(firstArrival)} ${epoch(lastAnswer)}\n`, () => process.exit(0));
  };
  process.on('SIGTERM', () => void stop());
  process.stdin.on('end', () => void stop());
  process.stdin.resume();
  process.stdout.write(`READY ${server.url} ${server.apiKey}\n`);
}
