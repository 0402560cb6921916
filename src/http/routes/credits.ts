/** `/v1/credits`: the caller's balance; grants by an admin token. */
import type { FastifyInstance } from 'fastify';
import { creditsOf, grantCreditsTo } from '../../jobs/credits.js';
import type { RouteContext } from '../context.js';
import { callerOf } from '../hooks.js';
import { errors, grantSchema } from '../schemas.js';

export async function creditRoutes(app: FastifyInstance, { ctx }: { ctx: RouteContext }): Promise<void> {
  const { database } = ctx.deps;
  app.get<{ Querystring: { userId?: string } }>(
    '/credits',
    {
      schema: {
        summary: "The caller's balance and reserved credits",
        tags: ['credits'],
        security: [{ bearer: [] }],
        querystring: { type: 'object', additionalProperties: false, properties: { userId: { type: 'string', maxLength: 128, description: 'Admin tokens only: whose credits.' } } },
        response: { 200: { $ref: 'Credits#' }, ...errors(400, 401, 429) },
      },
    },
    async (request) => creditsOf(database, callerOf(request), request.query.userId),
  );

  app.post<{ Params: { userId: string }; Body: { amount: number } }>(
    '/credits/:userId',
    {
      schema: {
        summary: 'Grant credits to a user (admin tokens only)',
        tags: ['credits'],
        security: [{ bearer: [] }],
        params: { type: 'object', required: ['userId'], properties: { userId: { type: 'string', minLength: 1, maxLength: 128 } } },
        body: grantSchema,
        response: { 200: { $ref: 'Credits#' }, ...errors(400, 401, 403, 429) },
      },
    },
    async (request) => grantCreditsTo(database, callerOf(request), request.params.userId, request.body.amount),
  );
}
