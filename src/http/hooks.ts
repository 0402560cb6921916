import type { FastifyRequest } from 'fastify';
import type { TokenCaller } from './auth.js';
import { HttpError } from './errors.js';

/** The caller of a route that needs one (the auth hook refused any request without it). */
export function callerOf(request: FastifyRequest): TokenCaller {
  if (request.caller === null) throw new HttpError('unauthorized', 'a bearer token is required: Authorization: Bearer <token>');
  return request.caller;
}
