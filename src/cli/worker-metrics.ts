/** `imagegen worker --metrics-port`: the worker's metrics, served on `GET /metrics`. */
import type { PipelineConfig } from '../config.js';
import type { Pipeline } from '../pipeline.js';
import { PipelineMetrics } from '../sinks/metrics.js';
import { serveMetrics } from '../sinks/metrics-server.js';
import { UnavailableError } from './failures.js';

/**
 * The metrics of a worker process (its runs' events, its provider limit, its queue: the
 * worker attaches the last two) and the server that exposes them; logs `metrics served`
 * with the URL (the port the system picked for `--metrics-port 0`). An address that cannot
 * be bound is an {@link UnavailableError} naming the flag (exit 1, before any job is taken).
 */
export async function serveWorkerMetrics(pipeline: Pipeline, config: PipelineConfig['metrics']): Promise<{ metrics: PipelineMetrics; close(): Promise<void> }> {
  const metrics = new PipelineMetrics({ database: pipeline.database, limiter: pipeline.limiter, logger: pipeline.logger });
  const port = config.port ?? 0;
  try {
    const server = await serveMetrics(metrics, { port, host: config.host });
    pipeline.logger.info({ url: server.url }, 'metrics served');
    return { metrics, close: () => server.close() };
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    throw new UnavailableError(`--metrics-port ${port} --metrics-host ${config.host}: cannot listen there (${code}); choose another port or host`, { cause: error });
  }
}
