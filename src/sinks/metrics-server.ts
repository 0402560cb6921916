import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { MetricsEndpoint } from './metrics.js';

/** Where a {@link serveMetrics} server listens. */
export interface MetricsServerConfig {
  /** 0: a free port the system picks (see {@link MetricsServer.url}). */
  readonly port: number;
  readonly host: string;
}

/** A listening metrics server. */
export interface MetricsServer {
  /** `http://host:port/metrics`, with the port actually bound. */
  readonly url: string;
  /** Stops listening and ends open connections (a scraper's keep-alive included). */
  close(): Promise<void>;
}

/**
 * Serves `GET /metrics` (and `HEAD`) from `endpoint` over plain `node:http`: the one route
 * a worker needs, without a web framework. Any other path is 404, any other method 405; a
 * render that fails is a 500 (the scraper marks the target down).
 *
 * Resolves once listening; rejects when the address cannot be bound (`EADDRINUSE`, ...).
 *
 * @example
 * const server = await serveMetrics(metrics, { port: 9464, host: '127.0.0.1' });
 * // curl http://127.0.0.1:9464/metrics
 * await server.close();
 */
export async function serveMetrics(endpoint: MetricsEndpoint, config: MetricsServerConfig): Promise<MetricsServer> {
  const server = createServer((request, response) => void answer(endpoint, request, response));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.port, config.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  return {
    url: `http://${host}:${port}/metrics`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      }),
  };
}

async function answer(endpoint: MetricsEndpoint, request: IncomingMessage, response: ServerResponse): Promise<void> {
  const path = new URL(request.url ?? '/', 'http://localhost').pathname;
  if (path !== '/metrics') return send(response, 404, 'text/plain; charset=utf-8', 'not found: the metrics are at /metrics\n');
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('allow', 'GET, HEAD');
    return send(response, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
  }
  let body: string;
  try {
    body = await endpoint.render();
  } catch (error) {
    return send(response, 500, 'text/plain; charset=utf-8', `metrics could not be read: ${error instanceof Error ? error.message : String(error)}\n`);
  }
  send(response, 200, endpoint.contentType, request.method === 'HEAD' ? '' : body);
}

function send(response: ServerResponse, status: number, contentType: string, body: string): void {
  response.writeHead(status, { 'content-type': contentType, 'cache-control': 'no-store' });
  response.end(body);
}
