/** `imagegen webhooks <jobId> [--redeliver]`, `imagegen webhooks secret <userId>`, and the webhooks of `imagegen run`. */
import type { Logger } from 'pino';
import type { WebhookConfig } from '../config.js';
import { JobNotFoundError } from '../db/index.js';
import type { WebhookDeliveryInfo } from '../db/index.js';
import { jobWebhooks, redeliverJobWebhooks, webhookSecretOf, type JobWebhooks } from '../jobs/webhooks.js';
import type { WebhookDispatcher } from '../sinks/webhook-dispatcher.js';
import { embeddedDatabaseMissing, print, withPipeline, type Invocation } from './invocation.js';

/** How much longer than one attempt's timeout `imagegen run` waits for its job's first webhook attempts. */
export const RUN_WEBHOOK_SETTLE_MARGIN_MS = 2_000;

/**
 * The end of `imagegen run`'s webhooks: waits (at most the attempt timeout + 2 s) until
 * every delivery of its job has had its first attempt, then stops the dispatcher (sends
 * still in flight are abandoned and due again). Retries still pending are sent by the
 * next process that runs a dispatcher on this database (`run`, `worker`, `serve`).
 */
export async function settleRunWebhooks(dispatcher: WebhookDispatcher, jobId: string, config: Pick<WebhookConfig, 'timeoutMs'>, logger: Logger): Promise<void> {
  try {
    const left = await dispatcher.settle(jobId, config.timeoutMs + RUN_WEBHOOK_SETTLE_MARGIN_MS);
    if (left > 0) logger.warn({ jobId, deliveries: left }, 'webhook deliveries not tried yet; the next imagegen run, worker or serve on this database sends them');
  } catch (error) {
    logger.warn({ err: error, jobId }, 'could not wait for the job\'s webhooks; the next imagegen run, worker or serve on this database sends them');
  } finally {
    await dispatcher.stop(500);
  }
}

function describeDelivery(d: WebhookDeliveryInfo): string {
  const attempts = d.attempts.map((a) => (a.statusCode !== null ? String(a.statusCode) : a.error)).join(',') || '-';
  const next = d.status === 'pending' ? `  next ${d.nextAttemptAt}` : '';
  return `${d.id}  ${d.type}  ${d.status}  attempts ${d.attempts.length} [${attempts}]${next}`;
}

function describeWebhooks(answer: JobWebhooks): string {
  if (answer.url === null) return `job ${answer.jobId} has no webhook`;
  const head = `job ${answer.jobId}: webhook ${answer.url} (${answer.events.join(', ')})`;
  return answer.deliveries.length === 0 ? `${head}\n  no deliveries yet` : [head, ...answer.deliveries.map((d) => `  ${describeDelivery(d)}`)].join('\n');
}

/**
 * `imagegen webhooks <jobId> [--redeliver] [--json]`: the job's deliveries (id, event type,
 * status, attempts with status codes or error kinds, next attempt). `--redeliver` makes every
 * one of them due again now (delivered, failed and pending alike; history kept) and prints
 * the list after. Exit 0; an unknown job is the usual not-found (exit 2).
 */
export async function cmdWebhooks(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  return withPipeline(inv, async (pipeline) => {
    if (inv.values.redeliver) {
      const answer = await redeliverJobWebhooks(pipeline.database, jobId);
      print(inv.json, answer, `${answer.redelivered} deliver${answer.redelivered === 1 ? 'y' : 'ies'} due again now (sent by a running worker or serve, or the next imagegen run)\n${describeWebhooks(answer)}`);
      return 0;
    }
    const answer = await jobWebhooks(pipeline.database, jobId);
    print(inv.json, answer, describeWebhooks(answer));
    return 0;
  });
}

/** `imagegen webhooks secret <userId> [--json]`: the user's signing secret (`{"userId","secret"}`), made on first use. */
export async function cmdWebhooksSecret(inv: Invocation): Promise<number> {
  const userId = inv.args[0] as string;
  return withPipeline(inv, async (pipeline) => {
    const answer = await webhookSecretOf(pipeline.database, userId);
    print(inv.json, answer, answer.secret);
    return 0;
  });
}
