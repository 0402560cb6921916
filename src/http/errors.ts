/**
 * Every error a route can meet, mapped in one place to a status and the service's error
 * object, the CLI's `--json` error object: `{"error":{"code","message","problems"}}`.
 */
import {
  CreditOverflowError,
  InputAttachmentError,
  isConnectionError,
  InsufficientCreditsError,
  JobLeasedError,
  JobNotFoundError,
  JobOwnershipError,
  MigrationError,
} from '../db/index.js';
import { PipelineError } from '../domain/error-class.js';
import { JobSpecError } from '../domain/job-spec.js';
import { AdminOnlyError, InvalidInputError } from '../jobs/caller.js';
import { JobEndedError } from '../jobs/cancel-job.js';
import { ImageNotFoundError } from '../jobs/job-image.js';
import { JobSpecConflictError } from '../jobs/submit-job.js';

/** The `code` of an error object; each has one status. */
export type ErrorCode =
  | 'invalid_input'
  | 'unauthorized'
  | 'insufficient_credits'
  | 'forbidden'
  | 'not_found'
  | 'conflict'
  | 'payload_too_large'
  | 'unsupported_media_type'
  | 'rate_limited'
  | 'unavailable'
  | 'internal';

export const STATUS_OF: Readonly<Record<ErrorCode, number>> = Object.freeze({
  invalid_input: 400,
  unauthorized: 401,
  insufficient_credits: 402,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  rate_limited: 429,
  unavailable: 503,
  internal: 500,
});

export interface Problem {
  readonly field: string;
  readonly rule: string;
  readonly message: string;
}

/** The body of every error answer. */
export interface ErrorBody {
  readonly error: { readonly code: ErrorCode; readonly message: string; readonly problems: readonly Problem[] };
}

export const problem = (field: string, rule: string): Problem => ({ field, rule, message: `${field}: ${rule}` });

/** An answer the service gives on purpose (401, 429, ...), thrown from a hook or handler. */
export class HttpError extends Error {
  override readonly name = 'HttpError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly problems: readonly Problem[] = [],
  ) {
    super(message);
  }
  get statusCode(): number {
    return STATUS_OF[this.code];
  }
}

/** What Fastify's validator reports for one failed rule (Ajv's error object, the part we read). */
interface ValidationIssue {
  readonly instancePath?: string;
  readonly message?: string;
  readonly params?: { readonly missingProperty?: string; readonly additionalProperty?: string };
}

/** `/stages/0/quantity` -> `stages[0].quantity`; the request part (`querystring`, `params`, `headers`) names top-level fields by themselves. */
export function fieldOf(issue: ValidationIssue): string {
  const path = (issue.instancePath ?? '')
    .split('/')
    .filter((part) => part !== '')
    .map((part) => part.replace(/~1/g, '/').replace(/~0/g, '~'))
    .reduce((at, part) => (/^[0-9]+$/.test(part) ? `${at}[${part}]` : at === '' ? part : `${at}.${part}`), '');
  const leaf = issue.params?.missingProperty ?? issue.params?.additionalProperty;
  if (leaf !== undefined) return path === '' ? leaf : `${path}.${leaf}`;
  return path === '' ? '(body)' : path;
}

/** A status and body for `error`; `internal` for anything not known here (the caller logs those). */
export function errorAnswer(error: unknown): { status: number; body: ErrorBody } {
  const answer = (code: ErrorCode, message: string, problems: readonly Problem[] = []) => ({ status: STATUS_OF[code], body: { error: { code, message, problems } } });
  if (error instanceof HttpError) return answer(error.code, error.message, error.problems);
  if (error instanceof JobSpecError) return answer('invalid_input', error.message, error.problems.map((p) => problem(p.field, p.rule)));
  if (error instanceof InvalidInputError) return answer('invalid_input', error.message, error.problems.map((p) => problem(p.field, p.rule)));
  if (error instanceof InputAttachmentError) {
    // Whether another user's attachment exists is not the caller's business: one answer for both.
    const rule = `attachment ${error.attachId ?? ''} does not exist (upload it first: POST /v1/attachments)`;
    return answer('invalid_input', `${error.field}: ${rule}`, [problem(error.field, rule)]);
  }
  if (error instanceof CreditOverflowError) return answer('invalid_input', error.message, [problem('amount', `would overflow: ${error.userId} holds ${error.held} credits and at most ${error.max} fit`)]);
  if (error instanceof InsufficientCreditsError) {
    return answer('insufficient_credits', `not enough credits: ${error.message}`, [problem('credits', `user ${error.userId} needs ${error.required} credits, has ${error.available}`)]);
  }
  if (error instanceof JobSpecConflictError) return answer('conflict', error.message, [problem('jobId', `already names a different job (${error.field} differs)`)]);
  if (error instanceof JobOwnershipError) {
    // Said without naming whose: the same words a different spec of one's own gets.
    const rule = 'already names a different job; give this job another jobId';
    return answer('conflict', `jobId ${error.jobId} ${rule}`, [problem('jobId', rule)]);
  }
  if (error instanceof JobEndedError) return answer('conflict', error.message, [problem('status', `the job has already ended (${error.status})`)]);
  if (error instanceof JobLeasedError) return answer('conflict', 'the job is being run by another process; try again', []);
  if (error instanceof JobNotFoundError) return answer('not_found', `job ${error.jobId} not found`);
  if (error instanceof ImageNotFoundError) return answer('not_found', error.message);
  if (error instanceof AdminOnlyError) return answer('forbidden', error.message);
  if (error instanceof MigrationError) return answer('unavailable', error.message);
  if (error instanceof PipelineError && error.errorClass === 'storage') return answer('unavailable', 'storage is unavailable; try again');
  if (isConnectionError(error)) return answer('unavailable', 'database is unavailable; try again');
  const fastify = error as { code?: unknown; statusCode?: unknown; validation?: readonly ValidationIssue[]; validationContext?: string; message?: unknown };
  if (Array.isArray(fastify.validation)) {
    const part = fastify.validationContext === 'body' || fastify.validationContext === undefined ? '' : `${fastify.validationContext} `;
    const problems = fastify.validation.map((issue: ValidationIssue) => problem(fieldOf(issue), issue.message ?? 'is not valid'));
    return answer('invalid_input', `invalid request ${part}(${problems.length} problem${problems.length === 1 ? '' : 's'})`, problems);
  }
  const message = typeof fastify.message === 'string' ? fastify.message : 'request refused';
  switch (fastify.statusCode) {
    case 413:
      return answer('payload_too_large', `the request body is too large: ${message}`);
    case 415:
      return answer('unsupported_media_type', message);
    case 429:
      return answer('rate_limited', message);
    case 400:
      return answer('invalid_input', message, [problem('(body)', message)]);
  }
  if (typeof fastify.statusCode === 'number' && fastify.statusCode >= 400 && fastify.statusCode < 500) return answer('invalid_input', message);
  return answer('internal', 'internal error (the service log says more)');
}
