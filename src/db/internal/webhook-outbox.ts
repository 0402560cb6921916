import { sql, type Transaction } from 'kysely';
import { webhookEventOf, WEBHOOK_EVENT_TYPES, type WebhookEventType } from '../../domain/webhook.js';
import type { NotifiedEvent } from '../notifications.js';
import type { DatabaseSchema } from '../schema.js';
import { jsonb } from './json.js';

/** The NOTIFY channel that wakes dispatchers when deliveries are written or made due (payload: a count, unused). */
export const WEBHOOK_DELIVERIES_CHANNEL = 'imagegen_webhooks';

/** The `webhook-id` of the delivery reporting event `seq` of job `jobId`: stable across retries. */
export function webhookMessageId(jobId: string, seq: number): string {
  return `msg_${jobId}_${seq}`;
}

/** A job's stored webhook, as `jobs.spec -> 'webhook'` holds it (checked: stored specs predate no rule of ours, but jsonb is jsonb). */
function storedWebhookOf(value: unknown): { url: string; events: WebhookEventType[] } | null {
  if (typeof value !== 'object' || value === null) return null;
  const { url, events } = value as { url?: unknown; events?: unknown };
  if (typeof url !== 'string' || !Array.isArray(events)) return null;
  return { url, events: events.filter((e): e is WebhookEventType => (WEBHOOK_EVENT_TYPES as readonly unknown[]).includes(e)) };
}

/**
 * Writes the outbox rows of events `first..` just appended to job `jobId`'s log: one
 * `webhook_deliveries` row per event its webhook subscribes to, then a NOTIFY that wakes
 * the dispatchers, all in `trx`, the transaction that logs the events, so a delivery
 * exists if and only if its event committed. A job without a webhook writes nothing.
 *
 * Called by `appendJobEvents`, under the job row lock it holds; the rows are new (their
 * key is the event's `(job, seq)`, which this transaction just took), so no other lock.
 */
export async function writeWebhookOutbox(
  trx: Transaction<DatabaseSchema>,
  job: { readonly jobId: string; readonly userId: string; readonly webhook: unknown },
  events: readonly NotifiedEvent[],
  first: number,
): Promise<number> {
  const webhook = storedWebhookOf(job.webhook);
  if (webhook === null) return 0;
  const rows = events.flatMap((event, index) => {
    const type = webhookEventOf(event.type);
    if (type === null || !webhook.events.includes(type)) return [];
    const seq = first + index;
    return [{ id: webhookMessageId(job.jobId, seq), job_id: job.jobId, seq, user_id: job.userId, event_type: type, url: webhook.url, payload: jsonb({ ...event, seq }) }];
  });
  if (rows.length === 0) return 0;
  await trx
    .with('written', (db) => db.insertInto('webhook_deliveries').values(rows))
    .selectNoFrom(sql`pg_notify(${WEBHOOK_DELIVERIES_CHANNEL}, ${String(rows.length)})`.as('notified'))
    .execute();
  return rows.length;
}
