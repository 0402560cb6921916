/** `GET /v1/jobs/:id/events`: Server-Sent Events of a job, resumable with `Last-Event-ID`. */
import type { FastifyInstance } from 'fastify';
import type { Subscription } from 'rxjs';
import { FOLLOWED_EVENT_TYPES, followJob } from '../../jobs/follow-job.js';
import { writeEventStream } from '../../sinks/sse-stream.js';
import { sharingListens } from '../../sources/shared-listens.js';
import type { RouteContext } from '../context.js';
import { HttpError } from '../errors.js';
import { callerOf } from '../hooks.js';
import { errors, jobIdParamsSchema } from '../schemas.js';

const SSE_HEADERS = Object.freeze({
  'content-type': 'text/event-stream; charset=utf-8',
  'cache-control': 'no-cache, no-transform',
  connection: 'keep-alive',
  // nginx buffers responses unless told not to; an event stream must not wait in a buffer.
  'x-accel-buffering': 'no',
});

const DESCRIPTION = `Server-Sent Events. A first connection gets \`event: snapshot\` (the job's summary; its \`id:\` is the number of the last event it reflects), then each
\`attempt:failed\`, \`slot:delivered\`, \`stage:completed\`, \`stage:short\` and \`job:finished\` as it commits (\`id:\` its number in the job's log, \`data:\` its JSON).
A client that reconnects with \`Last-Event-ID\` (or starts with \`?after=\`) gets no snapshot, only every event after that number, none twice. \`: ping\` comments keep idle streams open.
The stream ends after \`job:finished\` (at once, after the snapshot, for a job that has ended). A client that reads too slowly is dropped and resumes where it was.`;

/**
 * The event stream route. Refusals (404, 429: too many open streams for the token) are
 * ordinary JSON answers; once the job is found the response is taken over (`hijack`) and
 * written by `writeEventStream`, which reads the job's log only as fast as the client
 * reads. `live` holds every open stream so a shutdown ends them (`preClose`).
 */
export async function jobEventRoutes(app: FastifyInstance, { ctx, live }: { ctx: RouteContext; live: Set<Subscription> }): Promise<void> {
  const { deps, options, streams } = ctx;
  // Every stream of this server follows its job over one LISTEN (PostgreSQL: one connection, not one per client).
  const database = sharingListens(deps.database);
  app.get<{ Params: { id: string }; Headers: { 'last-event-id'?: string }; Querystring: { after?: string } }>(
    '/jobs/:id/events',
    {
      schema: {
        summary: "Follow a job's events (SSE)",
        description: DESCRIPTION,
        tags: ['jobs'],
        security: [{ bearer: [] }],
        params: jobIdParamsSchema,
        headers: { type: 'object', properties: { 'last-event-id': { type: 'string', pattern: '^[0-9]{1,10}$' } } },
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { after: { type: 'string', pattern: '^[0-9]{1,10}$', description: 'Resume after this event number, as `Last-Event-ID` does, for clients that cannot set the header on their first request (a browser\'s EventSource). The header wins when both are given.' } },
        },
        response: { 200: { description: 'text/event-stream', content: { 'text/event-stream': { schema: { type: 'string' } } } }, ...errors(400, 401, 404, 429) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      // EventSource resends its first URL (with `after`) on a reconnect, and the newer Last-Event-ID beside it: the header wins.
      const resumeAfter = request.headers['last-event-id'] ?? request.query.after;
      const lastEventId = resumeAfter === undefined ? undefined : Number(resumeAfter);
      if (!streams.tryOpen(caller.tokenKey)) throw new HttpError('rate_limited', `at most ${streams.max} event streams may be open per token; close one first`);
      let handedOver = false;
      try {
        const feed = await followJob(database, caller, request.params.id, { lastEventId, pollMs: options.followPollMs });
        reply.hijack();
        reply.raw.writeHead(200, SSE_HEADERS);
        handedOver = true;
        const log = request.log.child({ jobId: request.params.id });
        const snapshot = feed.snapshot === null ? undefined : { seq: feed.snapshot.seq, data: feed.snapshot.summary };
        const subscription = writeEventStream(reply.raw, feed.follow, {
          afterSeq: feed.afterSeq,
          snapshot,
          types: FOLLOWED_EVENT_TYPES,
          heartbeatMs: options.http.heartbeatMs,
          drainTimeoutMs: options.drainTimeoutMs,
        }).subscribe({
          next: (ending) => {
            if (ending.reason === 'failed') log.warn({ err: ending.error }, 'event stream failed; the client may resume with Last-Event-ID');
            else log.debug({ reason: ending.reason }, 'event stream ended');
          },
        });
        live.add(subscription);
        subscription.add(() => {
          live.delete(subscription);
          streams.close(caller.tokenKey);
        });
      } finally {
        if (!handedOver) streams.close(caller.tokenKey);
      }
    },
  );
}
