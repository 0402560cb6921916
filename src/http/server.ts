/**
 * The service: a thin HTTP face over the use cases in `src/jobs` (the ones the CLI
 * calls). One plugin per resource, registered by {@link buildServer}.
 */
import rateLimit from '@fastify/rate-limit';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Subscription } from 'rxjs';
import { TokenAuthenticator } from './auth.js';
import { StreamCounter, type RouteContext, type ServerDeps, type ServerOptions } from './context.js';
import { DEFAULT_HTTP_OPTIONS } from './defaults.js';
import { errorAnswer, HttpError } from './errors.js';
import { attachmentRoutes } from './routes/attachments.js';
import { creditRoutes } from './routes/credits.js';
import { jobEventRoutes } from './routes/job-events.js';
import { jobRoutes } from './routes/jobs.js';
import { pageRoutes } from './routes/pages.js';
import { cookieValue, DEFAULT_PAGE_TTLS, PAGE_HEADER, PAGE_SECRET_NAME, PageSessions, SESSION_COOKIE, sessionMayReach } from './page-session.js';
import { serviceSecret } from '../db/index.js';
import { serviceRoutes } from './routes/service.js';
import { webhookRoutes } from './routes/webhooks.js';
import { SHARED_SCHEMAS } from './schemas.js';

export type { ServerDeps, ServerOptions, MetricsSource } from './context.js';

/**
 * Builds the service (not listening: call `listen`, or `inject` in a test).
 *
 * - **Auth**: every `/v1` route needs `Authorization: Bearer <token>` (401 without a
 *   known one); the token names the user (`IMAGEGEN_API_TOKENS`) or is an admin's
 *   (`IMAGEGEN_ADMIN_TOKENS`). Another user's job or attachment is 404, as if it did not
 *   exist. Tokens are compared by hash in constant time and never logged.
 * - **Limits**: `bodyLimitBytes` (413), `rateLimitPerMinute` per token, or per address
 *   for requests without a known token (429, with `retry-after`), `maxStreamsPerToken`
 *   open event streams (429); a slow event-stream client holds no more than its socket's
 *   buffer (see `writeEventStream`).
 * - **Errors**: one error object everywhere, the CLI's: `{"error":{"code","message","problems"}}`
 *   (`errorAnswer`: 400 invalid_input, 401, 402 insufficient_credits, 403, 404, 409
 *   conflict, 413, 415, 429, 503 unavailable, 500 internal).
 * - **OpenAPI**: the route schemas (which validate the requests) are the document at
 *   `GET /openapi.json`.
 * - **Shutdown**: `close()` ends the open event streams first (clients resume with
 *   `Last-Event-ID` elsewhere), then waits for requests in flight.
 *
 * @example
 * const app = await buildServer({ ...pipeline, dispatcher }, { http: config.http, pricePerImage: config.pricePerImage, maxQuantity: config.maxQuantity });
 * await app.listen({ port: 8080, host: '127.0.0.1' });
 */
export async function buildServer(deps: ServerDeps, options: ServerOptions): Promise<FastifyInstance> {
  const auth = new TokenAuthenticator(options.http);
  // The live page's links and sessions are signed with the database's secret: every process on it agrees.
  const sessions = new PageSessions(await serviceSecret(deps.database, PAGE_SECRET_NAME));
  const ctx: RouteContext = {
    deps,
    options: {
      ...options,
      drainTimeoutMs: options.drainTimeoutMs ?? DEFAULT_HTTP_OPTIONS.drainTimeoutMs,
      readyTimeoutMs: options.readyTimeoutMs ?? DEFAULT_HTTP_OPTIONS.readyTimeoutMs,
      presignExpiresSeconds: options.presignExpiresSeconds ?? DEFAULT_HTTP_OPTIONS.presignExpiresSeconds,
    },
    streams: new StreamCounter(options.http.maxStreamsPerToken),
  };
  const app = Fastify({
    // pino's Logger is Fastify's logger; typed as the base so the instance is a plain FastifyInstance.
    loggerInstance: deps.logger as FastifyBaseLogger,
    bodyLimit: options.http.bodyLimitBytes,
    // No coercion: a schema validates what the wire carries ("3" is not a quantity), and nothing is silently dropped.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false } },
  });
  for (const schema of SHARED_SCHEMAS) app.addSchema(schema);
  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'imagegen-pipeline', version: '1', description: 'Runs image-generation jobs exactly: every stage delivers the images it asks for, each charged once.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer', description: 'IMAGEGEN_API_TOKENS / IMAGEGEN_ADMIN_TOKENS' } } },
    },
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => String(json['$id'] ?? `def-${i}`) },
  });
  await app.register(rateLimit, { global: false });
  const limit = app.rateLimit({
    max: options.http.rateLimitPerMinute,
    timeWindow: 60_000,
    // Per token (its hash), so one client cannot spend another's; requests without a known token, per address.
    keyGenerator: (request) => (request.caller ? `token:${request.caller.tokenKey}` : `address:${request.ip}`),
    errorResponseBuilder: (_request, context) => new HttpError('rate_limited', `more than ${context.max} requests per minute; retry in ${context.after}`),
  });

  app.decorateRequest('caller', null);
  app.addHook('onRequest', async (request, reply) => {
    const bearer = auth.authenticate(request.headers.authorization);
    const cookie = bearer === null ? cookieValue(request.headers.cookie, SESSION_COOKIE) : undefined;
    const session = cookie === undefined || cookie === '' ? null : sessions.callerOf(cookie);
    request.caller = bearer ?? session;
    // Public routes, and paths with no route (the route table is public anyway: /openapi.json).
    if (request.routeOptions.config?.public === true || request.is404) return;
    await limit.call(app, request, reply);
    if (session !== null) {
      // A link opens one job: its page and API routes, nothing else.
      if (!sessionMayReach(session, request.url.split('?')[0] as string)) throw new HttpError('forbidden', `this session was opened by a link to job ${session.jobScope} and reaches that job only`);
      // A cookie goes with every request the browser makes, a cross-site form's too; the page's own script adds this header, which another site cannot.
      const safe = request.method === 'GET' || request.method === 'HEAD';
      if (!safe && request.routeOptions.config?.page !== true && request.headers[PAGE_HEADER] !== '1') {
        throw new HttpError('forbidden', `a request that changes something with a page session needs the ${PAGE_HEADER}: 1 header (or a bearer token)`);
      }
    }
    if (request.caller === null && request.routeOptions.config?.page === true) return;
    if (request.caller === null) {
      reply.header('www-authenticate', 'Bearer');
      throw new HttpError('unauthorized', request.headers.authorization === undefined ? 'a bearer token is required: Authorization: Bearer <token>' : 'the bearer token is not valid');
    }
  });

  app.setErrorHandler((error, request, reply) => {
    const { status, body } = errorAnswer(error);
    if (status >= 500 && status !== 503) request.log.error({ err: error }, 'request failed');
    else if (status === 503) request.log.warn({ err: error }, 'a dependency is unavailable');
    return reply.code(status).send(body);
  });
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: { code: 'not_found', message: `no route ${request.method} ${request.url.split('?')[0]}`, problems: [] } }));

  const live = new Set<Subscription>();
  // Event streams never end on their own while their job runs: end them, or close() would wait for them.
  app.addHook('preClose', async () => {
    for (const stream of [...live]) stream.unsubscribe();
  });

  await app.register(serviceRoutes, { ctx });
  await app.register(pageRoutes, { ctx, auth, sessions, sessionSeconds: options.pageSessionSeconds ?? DEFAULT_PAGE_TTLS.sessionSeconds });
  await app.register(
    async (v1) => {
      await v1.register(jobRoutes, { ctx });
      await v1.register(jobEventRoutes, { ctx, live });
      await v1.register(attachmentRoutes, { ctx });
      await v1.register(creditRoutes, { ctx });
      await v1.register(webhookRoutes, { ctx });
    },
    { prefix: '/v1' },
  );
  return app;
}
