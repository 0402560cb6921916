/**
 * The provider every latency benchmark talks to: the local Gemini-protocol server
 * (`test/support/fake-gemini-server.ts`) with a set latency and a seeded failure rate,
 * reached through the real `GeminiImageGenerator` (`@google/genai` over HTTP).
 */
import { GeminiImageGenerator } from '../src/adapters/gemini-image-generator.js';
import { randomMixBehavior, startFakeGeminiServer, type FakeBehavior, type FakeGeminiServer } from '../test/support/fake-gemini-server.js';

/**
 * Failure classes drawn by the server. Transient 5xx only: the default mix also has
 * 429s that carry `retryDelay: 2s` (which the engine honours, so one late 429 adds 2 s
 * to the makespan whatever the design) and answers without an image; those measure
 * the provider's retry hint, not the engine. `BENCH_FAILURE_MIX=default` uses the default mix.
 */
export const TRANSIENT_5XX: readonly FakeBehavior[] = ['status:503', 'status:500'];

export interface ProviderSettings {
  readonly latencyMs: number;
  readonly failureRate: number;
  readonly seed: number;
  /** Long side of served images, px. */
  readonly imageSize?: number;
  readonly classes?: readonly FakeBehavior[] | undefined;
}

export async function startProvider(settings: ProviderSettings): Promise<{ server: FakeGeminiServer; generator: GeminiImageGenerator }> {
  const server = await startFakeGeminiServer({
    latencyMs: settings.latencyMs,
    imageSize: settings.imageSize ?? 64,
    behavior: randomMixBehavior({
      seed: settings.seed,
      failureRate: settings.failureRate,
      ...(settings.classes ? { classes: settings.classes } : {}),
    }),
  });
  const generator = new GeminiImageGenerator({ apiKey: server.apiKey, baseUrl: server.url, timeoutMs: 30_000 });
  return { server, generator };
}

export function failureMixFromEnv(): readonly FakeBehavior[] | undefined {
  return process.env['BENCH_FAILURE_MIX'] === 'default' ? undefined : TRANSIENT_5XX;
}

/** Calls the server answered with an image / with anything else. */
export function serverCounts(server: FakeGeminiServer): { calls: number; images: number; failures: number } {
  const calls = server.calls();
  const images = server.requests.filter((r) => r.servedStamp !== undefined).length;
  return { calls, images, failures: calls - images };
}
