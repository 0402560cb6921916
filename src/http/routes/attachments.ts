/** `POST /v1/attachments`: an input image upload, as `multipart/form-data` (one file) or the raw image as the body. */
import multipart from '@fastify/multipart';
import type { FastifyInstance } from 'fastify';
import { uploadAttachment } from '../../jobs/upload-attachment.js';
import { MAX_INPUT_IMAGE_BYTES } from '../../sources/input-image.js';
import type { RouteContext } from '../context.js';
import { HttpError } from '../errors.js';
import { callerOf } from '../hooks.js';
import { errors } from '../schemas.js';

/** Raw bodies taken as an image upload (the bytes decide what the image is, not the header). */
const RAW_IMAGE_TYPES = ['image/png', 'image/jpeg', 'image/webp', 'image/gif', 'image/avif', 'image/tiff', 'application/octet-stream'];

export async function attachmentRoutes(app: FastifyInstance, { ctx }: { ctx: RouteContext }): Promise<void> {
  const { deps, options } = ctx;
  // Encapsulated: only this plugin's routes take multipart and raw image bodies.
  await app.register(multipart, { limits: { fileSize: Math.min(MAX_INPUT_IMAGE_BYTES, options.http.bodyLimitBytes), files: 1, fields: 0, parts: 1 } });
  app.addContentTypeParser(RAW_IMAGE_TYPES, { parseAs: 'buffer' }, (_request, body, done) => done(null, body));

  app.post<{ Querystring: { userId?: string } }>(
    '/attachments',
    {
      schema: {
        summary: 'Upload an input image; its attach id is a stage\'s mergedImageAttachId',
        tags: ['attachments'],
        security: [{ bearer: [] }],
        consumes: ['multipart/form-data', ...RAW_IMAGE_TYPES],
        querystring: { type: 'object', additionalProperties: false, properties: { userId: { type: 'string', maxLength: 128, description: 'Admin tokens only: whose image.' } } },
        response: { 201: { $ref: 'Attachment#' }, ...errors(400, 401, 413, 415, 429) },
      },
    },
    async (request, reply) => {
      const caller = callerOf(request);
      let bytes: Buffer;
      if (request.isMultipart()) {
        const file = await request.file();
        if (file === undefined) throw new HttpError('invalid_input', 'the multipart body holds no file', []);
        bytes = await file.toBuffer();
      } else if (Buffer.isBuffer(request.body)) bytes = request.body;
      else throw new HttpError('unsupported_media_type', `send the image as multipart/form-data or as the raw body (${RAW_IMAGE_TYPES.join(', ')})`);
      return reply.code(201).send(await uploadAttachment(deps, caller, new Uint8Array(bytes), request.query.userId));
    },
  );
}
