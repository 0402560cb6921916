/** The service's own routes: liveness, readiness, the OpenAPI document, metrics. No token, no rate limit. */
import type { FastifyInstance } from 'fastify';
import { checkReadiness } from '../../jobs/readiness.js';
import type { RouteContext } from '../context.js';
import { readinessSchema } from '../schemas.js';

export async function serviceRoutes(app: FastifyInstance, { ctx }: { ctx: RouteContext }): Promise<void> {
  const { deps, options } = ctx;
  const config = { public: true };

  app.get('/healthz', { config, schema: { summary: 'The process is up', tags: ['service'], response: { 200: { type: 'object', properties: { status: { type: 'string' } } } } } }, async () => ({ status: 'ok' }));

  app.get(
    '/readyz',
    { config, schema: { summary: 'The database and the storage answer', tags: ['service'], response: { 200: readinessSchema, 503: readinessSchema } } },
    async (_request, reply) => {
      const readiness = await checkReadiness(deps, { timeoutMs: options.readyTimeoutMs });
      return reply.code(readiness.ready ? 200 : 503).send(readiness);
    },
  );

  app.get('/openapi.json', { config, schema: { hide: true } }, async () => app.swagger());

  const metrics = deps.metrics;
  if (metrics) {
    app.get('/metrics', { config, schema: { hide: true } }, async (_request, reply) => reply.type(metrics.contentType).header('cache-control', 'no-store').send(await metrics.render()));
  }
}
