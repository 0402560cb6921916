/** `/v1/webhooks`: the caller's signing secret; `/v1/jobs/:id/webhooks`: a job's deliveries. */
import type { FastifyInstance } from 'fastify';
import { callerWebhookSecret, jobWebhooks } from '../../jobs/webhooks.js';
import type { RouteContext } from '../context.js';
import { callerOf } from '../hooks.js';
import { errors, jobIdParamsSchema, webhookSecretSchema } from '../schemas.js';

const security = [{ bearer: [] }];

export async function webhookRoutes(app: FastifyInstance, { ctx }: { ctx: RouteContext }): Promise<void> {
  const { database } = ctx.deps;
  app.get(
    '/webhooks/secret',
    {
      schema: {
        summary: "The caller's webhook signing secret (made on first use); an admin token without a user of its own has none (400)",
        tags: ['webhooks'],
        security,
        response: { 200: webhookSecretSchema, ...errors(400, 401, 429) },
      },
    },
    async (request, reply) => reply.header('cache-control', 'no-store').send(await callerWebhookSecret(database, callerOf(request))),
  );

  app.get<{ Params: { id: string } }>(
    '/jobs/:id/webhooks',
    {
      schema: {
        summary: "A job's webhook deliveries and their attempts (`imagegen webhooks <jobId> --json`)",
        tags: ['webhooks'],
        security,
        params: jobIdParamsSchema,
        response: { 200: { type: 'object', additionalProperties: true }, ...errors(401, 404, 429) },
      },
    },
    async (request) => jobWebhooks(database, request.params.id, callerOf(request)),
  );
}
