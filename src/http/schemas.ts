/**
 * The JSON schemas of the service: they validate requests (Fastify, Ajv, no type
 * coercion: what a schema says is what the wire carries), shape responses, and are the
 * OpenAPI document (`GET /openapi.json`). One contract, no second description.
 */
import { ASPECT_RATIOS } from '../domain/aspect-ratio.js';
import { IMAGE_SIZES } from '../domain/models.js';
import { MAX_CREDITS } from '../domain/credit-amount.js';
import { PRIORITY_RANGE } from '../domain/job-spec.js';
import { MAX_WEBHOOK_URL_LENGTH, WEBHOOK_EVENT_TYPES } from '../domain/webhook.js';
import { JOB_PAGE } from '../jobs/list-jobs.js';

const id = { anyOf: [{ type: 'string', minLength: 1, maxLength: 128 }, { type: 'integer', minimum: 0 }] } as const;

export const problemSchema = {
  type: 'object',
  required: ['field', 'rule', 'message'],
  properties: { field: { type: 'string' }, rule: { type: 'string' }, message: { type: 'string' } },
} as const;

export const errorSchema = {
  $id: 'Error',
  type: 'object',
  description: "The CLI's --json error object. `problems` names each field at fault (a spec field, `jobId`, `credits`, ...).",
  required: ['error'],
  properties: {
    error: {
      type: 'object',
      required: ['code', 'message', 'problems'],
      properties: {
        code: {
          type: 'string',
          enum: ['invalid_input', 'unauthorized', 'insufficient_credits', 'forbidden', 'not_found', 'conflict', 'payload_too_large', 'unsupported_media_type', 'rate_limited', 'unavailable', 'internal'],
        },
        message: { type: 'string' },
        problems: { type: 'array', items: problemSchema },
      },
    },
  },
} as const;

const errorRef = { $ref: 'Error#' } as const;

/** The error answers a route may give, by status. */
export function errors(...statuses: readonly number[]): Record<number, typeof errorRef> {
  return Object.fromEntries(statuses.map((status) => [status, errorRef]));
}

const stageSchema = {
  type: 'object',
  description: 'One stage. The input image is an attachment (`mergedImageAttachId` or `inputAttachId`) or the image itself (`inputImageData`), never a file path.',
  required: ['quantity', 'prompt'],
  properties: {
    quantity: { type: 'integer', minimum: 1, description: 'Images this stage owes (at most IMAGEGEN_MAX_QUANTITY).' },
    prompt: { type: 'string', minLength: 1 },
    'aspect-ratio': { type: 'string', enum: [...ASPECT_RATIOS], description: 'Default 16:9. `aspectRatio` works too.' },
    aspectRatio: { type: 'string', enum: [...ASPECT_RATIOS] },
    imageSize: {
      type: 'string',
      enum: [...IMAGE_SIZES],
      description: 'The output size class, for models that take one (gemini-3-pro-image: 1K, 2K, 4K; gemini-3.1-flash-image: also 512). The ratios and sizes the configured model takes are checked at submit.',
    },
    mode: { type: 'string', enum: ['interactive', 'batch'], description: "`batch`: this stage's images go through the provider's batch API (half the price, minutes to hours). Default: the job's `mode`." },
    mergedImageAttachId: { ...id, description: 'An attachment of the job\'s user (POST /v1/attachments).' },
    inputAttachId: id,
    inputImageData: {
      type: 'string',
      contentEncoding: 'base64',
      description: 'The input image (PNG, JPEG, WebP, GIF, AVIF, TIFF, SVG), base64, at most 50 MiB decoded (and within the body limit). Stored as given; the provider gets PNG/JPEG/WebP within 13 MiB (others are converted, larger ones downscaled).',
    },
  },
} as const;

const webhookSpecSchema = {
  type: 'object',
  description:
    'Signed callbacks (Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature`, HMAC-SHA256 with the secret of `GET /v1/webhooks/secret`), sent at least once, retried for 24 h. `https` to public addresses only.',
  required: ['url'],
  additionalProperties: false,
  properties: {
    url: { type: 'string', minLength: 1, maxLength: MAX_WEBHOOK_URL_LENGTH, description: 'An https URL whose host resolves to public addresses only.' },
    events: { type: 'array', minItems: 1, uniqueItems: true, items: { type: 'string', enum: [...WEBHOOK_EVENT_TYPES] }, description: 'Default ["job.finished"].' },
  },
} as const;

export const webhookSecretSchema = {
  $id: 'WebhookSecret',
  type: 'object',
  required: ['userId', 'secret'],
  properties: {
    userId: { type: 'string' },
    secret: { type: 'string', description: '`whsec_<base64>`: verify webhooks with any Standard Webhooks library.' },
  },
} as const;

export const jobSubmitSchema = {
  $id: 'JobSubmit',
  type: 'object',
  description: "The job file's spec without `userId` (the token says who; an admin token may name `userId`).",
  required: ['stages'],
  properties: {
    jobId: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$', description: 'Idempotency key: the same spec again answers the same job (200); another spec under it is 409.' },
    userId: { ...id, description: 'Admin tokens only.' },
    productionId: id,
    priority: { type: 'integer', minimum: PRIORITY_RANGE.min, maximum: PRIORITY_RANGE.max, description: 'Higher runs first. Default 0.' },
    maxCostUsd: {
      type: 'number',
      exclusiveMinimum: 0,
      description: "Spend cap, USD: no attempt starts whose estimate (the service's price table) would pass it; the short stages end `cost_cap` and the job `partial`. Default: no cap.",
    },
    mode: { type: 'string', enum: ['interactive', 'batch'], description: "The stages' default: `batch` sends them through the provider's batch API, in rounds, at batch prices. Default `interactive`." },
    stages: { type: 'array', minItems: 1, items: stageSchema },
    webhook: webhookSpecSchema,
  },
} as const;

export const jobSummarySchema = {
  $id: 'JobSummary',
  type: 'object',
  description: "A job's summary: the CLI's `status --json` object.",
  required: ['jobId', 'status', 'totalImages', 'deliveredImages', 'attachIds', 'stages', 'attempts', 'credits', 'cost'],
  properties: {
    jobId: { type: 'string' },
    status: { type: 'string', enum: ['queued', 'running', 'completed', 'partial', 'failed', 'cancelled'] },
    totalImages: { type: 'integer' },
    deliveredImages: { type: 'integer' },
    mode: { type: 'string', enum: ['batch'], description: '`batch` when the job\'s spec says so; absent for an interactive job. Each batch stage says it too.' },
    attachIds: { type: 'array', items: { type: 'string' }, description: 'Stage order, then slot order.' },
    stages: {
      type: 'array',
      items: {
        type: 'object',
        required: ['index', 'quantity', 'delivered', 'attachIds', 'shortfall'],
        properties: {
          index: { type: 'integer' },
          quantity: { type: 'integer' },
          mode: { type: 'string', enum: ['batch'], description: '`batch` for a batch stage; absent: interactive.' },
          rounds: {
            type: 'array',
            description: "Batch stages only: each round's batch, in order (a round carries the previous one's failures).",
            items: {
              type: 'object',
              required: ['round', 'batch', 'state', 'requests', 'delivered', 'failed', 'error'],
              properties: {
                round: { type: 'integer' },
                batch: { type: ['string', 'null'], description: "The provider's batch name; null: the create never answered." },
                state: { type: 'string', enum: ['submitting', 'pending', 'running', 'succeeded', 'failed', 'cancelled', 'expired'] },
                requests: { type: 'integer' },
                delivered: { type: 'integer' },
                failed: { type: 'integer' },
                error: { type: ['string', 'null'] },
              },
            },
          },
          delivered: { type: 'integer' },
          attachIds: { type: 'array', items: { type: 'string' } },
          shortfall: {
            type: ['object', 'null'],
            required: ['count', 'reason', 'errorClass', 'detail'],
            properties: {
              count: { type: 'integer' },
              reason: { type: 'string' },
              errorClass: { type: ['string', 'null'] },
              detail: { type: ['string', 'null'], description: 'The latest failure of errorClass, e.g. which quota ran out (null: none).' },
            },
          },
        },
      },
    },
    attempts: {
      type: 'object',
      required: ['total', 'failed', 'abandoned', 'byClass'],
      properties: {
        total: { type: 'integer' },
        failed: { type: 'integer' },
        abandoned: { type: 'integer' },
        byClass: { type: 'object', additionalProperties: { type: 'integer' } },
      },
    },
    credits: {
      type: 'object',
      required: ['reserved', 'captured', 'released'],
      properties: { reserved: { type: 'integer' }, captured: { type: 'integer' }, released: { type: 'integer' } },
    },
    cost: {
      type: 'object',
      description: "Estimated provider cost, USD, from the price table (list prices, `IMAGEGEN_PRICES`): an estimate, not an invoice.",
      required: ['estimatedUsd', 'perDeliveredImageUsd', 'wastedUsd', 'possiblyBilledUsd', 'possiblyBilledCount', 'maxCostUsd'],
      properties: {
        estimatedUsd: { type: 'number', description: "Every answer's cost, failed answers included (they are billed)." },
        perDeliveredImageUsd: { type: ['number', 'null'], description: '`estimatedUsd / deliveredImages`; null when nothing was delivered.' },
        wastedUsd: { type: 'number', description: 'The part of `estimatedUsd` whose answers did not become a delivered image.' },
        possiblyBilledUsd: { type: 'number', description: 'Timed-out calls the provider may still bill, at one image each; not in `estimatedUsd`.' },
        possiblyBilledCount: { type: 'integer', description: 'How many calls timed out (possibly billed).' },
        maxCostUsd: { type: ['number', 'null'], description: "The job's spend cap; null: none." },
      },
    },
  },
} as const;

export const jobListSchema = {
  $id: 'JobList',
  type: 'object',
  required: ['jobs', 'nextCursor'],
  properties: {
    jobs: {
      type: 'array',
      items: {
        type: 'object',
        required: ['jobId', 'status', 'productionId', 'priority', 'totalImages', 'deliveredImages', 'createdAt', 'finishedAt'],
        properties: {
          jobId: { type: 'string' },
          status: { type: 'string' },
          productionId: { type: ['string', 'null'] },
          priority: { type: 'integer' },
          totalImages: { type: 'integer' },
          deliveredImages: { type: 'integer' },
          createdAt: { type: 'string', format: 'date-time' },
          finishedAt: { type: ['string', 'null'], format: 'date-time' },
        },
      },
    },
    nextCursor: { type: ['string', 'null'], description: 'Pass as `cursor` for the next page; null on the last page.' },
  },
} as const;

export const jobListQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    status: { type: 'string', enum: ['queued', 'running', 'completed', 'partial', 'failed', 'cancelled'] },
    limit: { type: 'string', pattern: '^[0-9]{1,4}$', description: `Jobs per page, 1..${JOB_PAGE.maxLimit} (default ${JOB_PAGE.defaultLimit}).` },
    cursor: { type: 'string', maxLength: 512 },
    userId: { type: 'string', maxLength: 128, description: 'Admin tokens only: whose jobs.' },
  },
} as const;

export const jobIdParamsSchema = {
  type: 'object',
  required: ['id'],
  properties: { id: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' } },
} as const;

export const imageParamsSchema = {
  type: 'object',
  required: ['id', 'stage', 'slot'],
  properties: {
    id: { type: 'string', pattern: '^[A-Za-z0-9_-]{1,64}$' },
    stage: { type: 'string', pattern: '^[0-9]{1,6}$' },
    slot: { type: 'string', pattern: '^[0-9]{1,6}$' },
  },
} as const;

export const cancelSchema = {
  type: 'object',
  required: ['jobId', 'outcome', 'status'],
  properties: {
    jobId: { type: 'string' },
    outcome: { type: 'string', enum: ['cancelled', 'requested'], description: '`cancelled`: nobody ran it, it ended now; `requested`: its runner stops within about a second.' },
    status: { type: 'string', enum: ['cancelled', 'running'] },
  },
} as const;

export const creditsSchema = {
  $id: 'Credits',
  type: 'object',
  required: ['userId', 'balance', 'reserved'],
  properties: {
    userId: { type: 'string' },
    balance: { type: 'integer', description: 'What the user can still spend.' },
    reserved: { type: 'integer', description: 'What unfinished jobs hold.' },
  },
} as const;

export const grantSchema = {
  type: 'object',
  required: ['amount'],
  additionalProperties: false,
  properties: { amount: { type: 'integer', minimum: 1, maximum: MAX_CREDITS } },
} as const;

export const attachmentSchema = {
  $id: 'Attachment',
  type: 'object',
  required: ['attachId', 'contentType', 'byteSize', 'width', 'height'],
  properties: {
    attachId: { type: 'string', description: "A stage's `mergedImageAttachId`." },
    contentType: { type: 'string' },
    byteSize: { type: 'integer' },
    width: { type: 'integer' },
    height: { type: 'integer' },
  },
} as const;

export const readinessSchema = {
  type: 'object',
  required: ['ready', 'database', 'storage'],
  properties: { ready: { type: 'boolean' }, database: { type: 'string', enum: ['ok', 'unavailable'] }, storage: { type: 'string', enum: ['ok', 'unavailable'] } },
} as const;

/** Shared schemas, added to the instance so routes refer to them (`Error#`) and OpenAPI lists them once. */
export const SHARED_SCHEMAS = [errorSchema, jobSubmitSchema, jobSummarySchema, jobListSchema, creditsSchema, attachmentSchema] as const;
