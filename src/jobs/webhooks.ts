/**
 * Webhooks as the entry points use them: a process's dispatcher, a user's signing secret,
 * a job's deliveries and their redelivery (`imagegen webhooks`, `GET /v1/webhooks/secret`).
 */
import type { Logger } from 'pino';
import type { WebhookConfig } from '../config.js';
import { getWebhookSecret, JobNotFoundError, getJobSpec, listWebhookDeliveries, redeliverWebhooks, retryTransient, type Database, type WebhookDeliveryInfo } from '../db/index.js';
import { printableWebhookUrl } from '../domain/webhook.js';
import { WebhookDispatcher, type WebhookAttemptMetrics } from '../sinks/webhook-dispatcher.js';
import { InvalidInputError, visibleJob, type Caller } from './caller.js';
import { jobSummary } from './job-summary.js';

/**
 * Starts the webhook dispatcher of a process (`imagegen worker`, `serve`, `run`) with the
 * configuration's settings; `job.finished` carries the job's summary (`status --json`).
 * Stop it with `stop()` before the database closes.
 */
export function startWebhookDispatcher(
  deps: { readonly database: Database; readonly logger?: Logger | undefined; readonly metrics?: WebhookAttemptMetrics | undefined },
  config: WebhookConfig,
): WebhookDispatcher {
  const dispatcher = new WebhookDispatcher(
    { database: deps.database, logger: deps.logger, metrics: deps.metrics, describeJob: (jobId) => retryTransient(() => jobSummary(deps.database, jobId)) },
    {
      timeoutMs: config.timeoutMs,
      retryWindowMs: config.retryWindowMs,
      backoffBaseMs: config.backoffBaseMs,
      backoffMaxMs: config.backoffMaxMs,
      pollMs: config.pollMs,
      concurrency: config.concurrency,
      allowLocal: config.allowLocal,
    },
  );
  dispatcher.start();
  return dispatcher;
}

/** A user's signing secret, as `imagegen webhooks secret --json` and `GET /v1/webhooks/secret` print it. */
export interface WebhookSecret {
  readonly userId: string;
  /** `whsec_<base64>`: verify with any Standard Webhooks library. */
  readonly secret: string;
}

/** User `userId`'s signing secret, made on first use (`imagegen webhooks secret <userId>`). */
export async function webhookSecretOf(database: Database, userId: string): Promise<WebhookSecret> {
  return { userId, secret: await retryTransient(() => getWebhookSecret(database, userId)) };
}

/**
 * The caller's own signing secret (`GET /v1/webhooks/secret`). A secret belongs to a user:
 * an admin token that acts for no user has none.
 *
 * @throws {InvalidInputError} an admin token without a user of its own.
 */
export async function callerWebhookSecret(database: Database, caller: Caller): Promise<WebhookSecret> {
  if (caller.userId === null) {
    throw new InvalidInputError([{ field: 'authorization', rule: 'an admin token that acts for no user has no webhook secret: use a user token (or imagegen webhooks secret <userId>)' }]);
  }
  return webhookSecretOf(database, caller.userId);
}

/** A job's webhook and its deliveries (`imagegen webhooks <jobId> --json`). */
export interface JobWebhooks {
  readonly jobId: string;
  /** The webhook's URL (user name and password masked), or null: the job has none. */
  readonly url: string | null;
  readonly events: readonly string[];
  readonly deliveries: readonly WebhookDeliveryInfo[];
}

/**
 * Job `jobId`'s webhook deliveries, each with its attempts. With a `caller`, another
 * user's job is not found, as everywhere.
 *
 * @throws {JobNotFoundError} no such job (or not the caller's).
 */
export async function jobWebhooks(database: Database, jobId: string, caller?: Caller): Promise<JobWebhooks> {
  const stored = caller ? await visibleJob(database, caller, jobId) : await retryTransient(() => getJobSpec(database, jobId));
  if (stored === null) throw new JobNotFoundError(jobId);
  const deliveries = await retryTransient(() => listWebhookDeliveries(database, jobId));
  const webhook = stored.spec.webhook;
  return { jobId, url: webhook ? printableWebhookUrl(webhook.url) : null, events: webhook?.events ?? [], deliveries };
}

/**
 * Sends every one of job `jobId`'s deliveries again (delivered, failed and pending alike:
 * each due now, with a fresh retry window; the attempts so far are kept). Receivers drop
 * what they already have by `webhook-id`. A dispatcher sends them: `imagegen worker`,
 * `serve`, or the next `imagegen run`.
 *
 * @throws {JobNotFoundError} no such job (or not the caller's).
 */
export async function redeliverJobWebhooks(database: Database, jobId: string, caller?: Caller): Promise<JobWebhooks & { readonly redelivered: number }> {
  await jobWebhooks(database, jobId, caller);
  // Not retried: a redelivery is idempotent in effect, but a lost answer is better reported than hidden.
  const redelivered = await redeliverWebhooks(database, jobId);
  return { ...(await jobWebhooks(database, jobId, caller)), redelivered };
}
