/** `imagegen run --open`: the live page of the job this process runs, served by this process while it runs. */
import type { PipelineConfig } from '../config.js';
import { jobPageLink } from '../jobs/page-links.js';
import type { Pipeline } from '../pipeline.js';
import { UnavailableError } from './failures.js';

/** How long the page server waits, after the job ended, for open event streams to send `job:finished` and end. */
const LINGER_MS = 3_000;

export interface RunPage {
  /** The signed link (the job only, `IMAGEGEN_LINK_TTL_SECONDS`). */
  readonly url: string;
  /** Lets open pages receive the job's end, then stops serving. */
  close(): Promise<void>;
}

/**
 * Serves the job's live page from this process on `--port` (default: a free port the
 * system picks) and `--host`, and returns a link to it. The server takes no bearer
 * token (none is configured here): the link's session reaches this job's page and API
 * routes only, so the process serves nothing else. On the embedded database this is
 * the only way to watch a run live: PGlite serves one process.
 */
export async function openRunPage(pipeline: Pipeline, config: PipelineConfig, options: { readonly jobId: string; readonly userId: string; readonly port: number | undefined }): Promise<RunPage> {
  const { buildServer } = await import('../http/server.js');
  const { database, store, generator, limiter, logger } = pipeline;
  const refuse = { dispatch: async () => Promise.reject(new UnavailableError('imagegen run --open serves one job; submit jobs to imagegen serve')) };
  const http = { ...config.http, tokens: [], adminTokens: [] };
  const app = await buildServer({ database, store, generator, limiter, logger, dispatcher: refuse }, { http, pricePerImage: config.pricePerImage, maxQuantity: config.maxQuantity, pageSessionSeconds: config.http.pageSessionSeconds, imageModel: config.gemini.model });
  let base: string;
  try {
    base = await app.listen({ port: options.port ?? 0, host: config.http.host });
  } catch (error) {
    await app.close();
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new UnavailableError(`--port ${options.port ?? 0} --host ${config.http.host}: cannot serve the live page there (${code}); choose another port`, { cause: error });
  }
  const { url } = await jobPageLink(database, { baseUrl: base.replace('://0.0.0.0', '://127.0.0.1'), userId: options.userId, jobId: options.jobId, ttlSeconds: config.http.linkTtlSeconds });
  return {
    url,
    close: async () => {
      // Open event streams end by themselves after job:finished; give them the moment to send it.
      const started = Date.now();
      while (Date.now() - started < LINGER_MS && (await openStreams(app)) > 0) await new Promise((r) => setTimeout(r, 100));
      await app.close();
    },
  };
}

async function openStreams(app: { server: { getConnections(cb: (error: Error | null, count: number) => void): void } }): Promise<number> {
  return new Promise((resolve) => app.server.getConnections((error, count) => resolve(error ? 0 : count)));
}
