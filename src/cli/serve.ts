/** `imagegen serve`: the HTTP API (src/http) on this process's pipeline. */
import { firstValueFrom } from 'rxjs';
import { ConfigError } from '../config.js';
import type { JobDispatcher } from '../jobs/accept-job.js';
import { engineOptionsOf } from '../pipeline.js';
import { LocalJobRunner } from '../streams/local-runner.js';
import { startWebhookDispatcher } from '../jobs/webhooks.js';
import { UnavailableError, UsageError } from './failures.js';
import { loggedSignalNotice, shutdownSignals, withJobsPipeline, type Invocation } from './invocation.js';

/**
 * Serves the API until SIGTERM/SIGINT, then: stops listening (open event streams end;
 * clients resume elsewhere with `Last-Event-ID`), stops the runs (in-flight attempts
 * finish, unfinished jobs are handed back), exits 0.
 *
 * - Embedded database (no `DATABASE_URL`): accepted jobs run in this process
 *   (`LocalJobRunner`, `IMAGEGEN_WORKER_JOBS` at once), and jobs a previous process left
 *   unfinished are resumed at start: `imagegen serve` alone is a working service.
 * - PostgreSQL: accepted jobs go on the queue for `imagegen worker` processes;
 *   `--with-worker` also runs a worker in this process.
 *
 * Logs `serving` with the URL (the port the system picked for `--port 0`).
 */
export async function cmdServe(inv: Invocation): Promise<number> {
  const { config } = inv;
  const withWorker = inv.values['with-worker'] === true;
  if (config.http.tokens.length === 0 && config.http.adminTokens.length === 0) {
    throw new ConfigError('IMAGEGEN_API_TOKENS', 'serve needs at least one token: set IMAGEGEN_API_TOKENS (token=userId,... or @/path/file) or IMAGEGEN_ADMIN_TOKENS');
  }
  if (withWorker && !config.databaseUrl) throw new UsageError('--with-worker', 'needs DATABASE_URL: on the embedded database serve runs the jobs it accepts in this process already');
  return withJobsPipeline(inv, async (pipeline) => {
    const engine = engineOptionsOf(config);
    // pg-boss is loaded only on PostgreSQL, where the queue is used.
    const fleet = config.databaseUrl ? await import('../streams/worker.js') : undefined;
    const queue = fleet ? await fleet.openJobQueue(pipeline) : undefined;
    // One registry for the process: GET /metrics counts the runs of this process (in process or its worker).
    const { PipelineMetrics } = await import('../sinks/metrics.js');
    const metrics = new PipelineMetrics({ database: pipeline.database, limiter: pipeline.limiter, logger: pipeline.logger });
    const runner = queue ? undefined : new LocalJobRunner({ ...pipeline, metrics }, { jobConcurrency: config.workerJobs, engine });
    const dispatcher: JobDispatcher = queue ? { dispatch: (jobId, { priority }) => queue.submit(jobId, { priority }) } : (runner as LocalJobRunner);
    const signals = shutdownSignals(loggedSignalNotice(pipeline.logger));
    // The webhook outbox is sent from here too (the embedded database has no other process to do it).
    const webhooks = startWebhookDispatcher({ ...pipeline, metrics }, config.webhooks);
    try {
      const { buildServer } = await import('../http/server.js');
      const { database, store, generator, limiter, logger } = pipeline;
      const app = await buildServer({ database, store, generator, limiter, logger, dispatcher, metrics }, { http: config.http, pricePerImage: config.pricePerImage, maxQuantity: config.maxQuantity, allowLocalWebhooks: config.webhooks.allowLocal, imageModel: config.gemini.model });
      let url: string;
      try {
        url = await app.listen({ port: config.http.port, host: config.http.host });
      } catch (error) {
        await app.close();
        const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
        throw new UnavailableError(`--port ${config.http.port} --host ${config.http.host}: cannot listen there (${code}); choose another port or host`, { cause: error });
      }
      logger.info({ url, database: config.databaseUrl ? 'postgres' : 'pglite', jobs: runner ? 'in process' : withWorker ? 'queue, and a worker in process' : 'queue' }, 'serving');
      await runner?.resumeUnfinished();
      const worker = withWorker && fleet ? fleet.runWorker(pipeline, { stop$: signals.stop$, engine, jobConcurrency: config.workerJobs, metrics }) : undefined;
      await firstValueFrom(signals.stop$);
      logger.info('stopping: no new requests; event streams end; in-flight attempts finish');
      await app.close();
      await runner?.stop();
      await worker;
      logger.info('stopped');
      return 0;
    } finally {
      signals.dispose();
      await webhooks.stop();
      await queue?.close();
    }
  });
}
