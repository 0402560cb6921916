/** `/v1/jobs`: submit, read, list, cancel, and the delivered images. Thin: each route is one use case. */
import type { FastifyInstance } from 'fastify';
import { acceptJob } from '../../jobs/accept-job.js';
import { cancelJob } from '../../jobs/cancel-job.js';
import { jobImage } from '../../jobs/job-image.js';
import { visibleJobSummary } from '../../jobs/job-summary.js';
import { listJobs, type ListJobsQuery } from '../../jobs/list-jobs.js';
import { readJobRequest } from '../../sources/job-request.js';
import { runDepsOf, type RouteContext } from '../context.js';
import { callerOf } from '../hooks.js';
import { cancelSchema, errors, imageParamsSchema, jobIdParamsSchema, jobListQuerySchema } from '../schemas.js';

const security = [{ bearer: [] }];

export async function jobRoutes(app: FastifyInstance, { ctx }: { ctx: RouteContext }): Promise<void> {
  const { deps, options } = ctx;
  const allowLocalWebhooks = options.allowLocalWebhooks === true;
  const limits = { maxQuantity: options.maxQuantity, allowLocalWebhooks, imageModel: options.imageModel };

  app.post<{ Body: unknown }>(
    '/jobs',
    {
      // The spec's own reader words the problems as the CLI does; the schema is the contract and the document.
      attachValidation: true,
      schema: {
        summary: 'Submit a job (idempotent on jobId)',
        tags: ['jobs'],
        security,
        body: { $ref: 'JobSubmit#' },
        response: { 200: { $ref: 'JobSummary#' }, 201: { $ref: 'JobSummary#' }, ...errors(400, 401, 402, 409, 413, 429) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      if (request.validationError) {
        // The CLI's problems list when the spec reader finds the fault; the schema's words when only the schema does.
        await readJobRequest(request.body, caller, limits);
        throw request.validationError;
      }
      const { created, summary } = await acceptJob(deps, caller, request.body, { pricePerImage: options.pricePerImage, limits, allowLocalWebhooks });
      return reply
        .code(created ? 201 : 200)
        .header('location', `/v1/jobs/${summary.jobId}`)
        .send(summary);
    },
  );

  app.get<{ Params: { id: string } }>(
    '/jobs/:id',
    { schema: { summary: "A job's summary", tags: ['jobs'], security, params: jobIdParamsSchema, response: { 200: { $ref: 'JobSummary#' }, ...errors(401, 404, 429) } } },
    async (request) => visibleJobSummary(deps.database, callerOf(request), request.params.id),
  );

  app.get<{ Querystring: ListJobsQuery }>(
    '/jobs',
    { schema: { summary: "The caller's jobs, newest first", tags: ['jobs'], security, querystring: jobListQuerySchema, response: { 200: { $ref: 'JobList#' }, ...errors(400, 401, 429) } } },
    async (request) => listJobs(deps.database, callerOf(request), request.query),
  );

  app.delete<{ Params: { id: string } }>(
    '/jobs/:id',
    { schema: { summary: 'Cancel a job', tags: ['jobs'], security, params: jobIdParamsSchema, response: { 202: cancelSchema, ...errors(401, 404, 409, 429) } } },
    async (request, reply) => reply.code(202).send(await cancelJob(runDepsOf(deps), request.params.id, callerOf(request))),
  );

  app.get<{ Params: { id: string; stage: string; slot: string } }>(
    '/jobs/:id/images/:stage/:slot',
    {
      schema: {
        summary: 'A delivered image (WebP), or a redirect to a short-lived URL of it (S3)',
        tags: ['jobs'],
        security,
        params: imageParamsSchema,
        response: { 200: { description: 'The WebP bytes', content: { 'image/webp': { schema: { type: 'string', format: 'binary' } } } }, 302: { description: 'Presigned URL in Location', type: 'null' }, ...errors(401, 404, 429, 503) },
      },
    },
    async (request, reply) => {
      const { id, stage, slot } = request.params;
      const image = await jobImage(deps, callerOf(request), id, Number(stage), Number(slot), { expiresInSeconds: options.presignExpiresSeconds });
      if (image.kind === 'url') return reply.header('cache-control', 'no-store').redirect(image.url, 302);
      // A slot is filled once: its image never changes.
      return reply.type(image.contentType).header('cache-control', 'private, max-age=31536000, immutable').header('etag', `"${image.attachId}"`).send(Buffer.from(image.bytes));
    },
  );
}
