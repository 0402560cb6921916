import type { Database } from '../database.js';
import type { WebhookDeliveryStatus } from '../schema.js';

/** One attempt of a delivery, as recorded. */
export interface WebhookAttemptInfo {
  readonly attempt: number;
  /** ISO time the attempt started. */
  readonly at: string;
  readonly durationMs: number;
  /** The receiver's HTTP status, or null (then `error`). */
  readonly statusCode: number | null;
  /** `timeout`, `connection_reset`, `connection_refused`, `dns`, `forbidden_address`, `tls`, `network`; null with a status. */
  readonly error: string | null;
}

/** A job's webhook delivery and its attempts. */
export interface WebhookDeliveryInfo {
  /** The `webhook-id` (`msg_<jobId>_<seq>`). */
  readonly id: string;
  readonly type: string;
  /** The reported event's seq in the job's event log. */
  readonly seq: number;
  readonly status: WebhookDeliveryStatus;
  readonly attempts: readonly WebhookAttemptInfo[];
  /** ISO time of the next attempt; null once delivered or failed. */
  readonly nextAttemptAt: string | null;
  /** ISO time the event committed. */
  readonly createdAt: string;
  /** ISO time it was delivered or failed; null while pending. */
  readonly finishedAt: string | null;
}

/**
 * Job `jobId`'s webhook deliveries in event order, each with its attempts in order.
 * Plain reads, no lock: a listing taken while a dispatcher sends may be one attempt behind.
 */
export async function listWebhookDeliveries(database: Database, jobId: string): Promise<WebhookDeliveryInfo[]> {
  const deliveries = await database.db
    .selectFrom('webhook_deliveries')
    .select(['id', 'event_type', 'seq', 'status', 'next_attempt_at', 'created_at', 'finished_at'])
    .where('job_id', '=', jobId)
    .orderBy('seq')
    .execute();
  if (deliveries.length === 0) return [];
  const attempts = await database.db
    .selectFrom('webhook_attempts')
    .select(['delivery_id', 'attempt', 'at', 'duration_ms', 'status_code', 'error'])
    .where('delivery_id', 'in', deliveries.map((d) => d.id))
    .orderBy('delivery_id')
    .orderBy('attempt')
    .execute();
  const iso = (value: Date | string) => new Date(value).toISOString();
  return deliveries.map((d) => ({
    id: d.id,
    type: d.event_type,
    seq: d.seq,
    status: d.status,
    attempts: attempts
      .filter((a) => a.delivery_id === d.id)
      .map((a) => ({ attempt: a.attempt, at: iso(a.at), durationMs: a.duration_ms, statusCode: a.status_code, error: a.error })),
    nextAttemptAt: d.status === 'pending' ? iso(d.next_attempt_at) : null,
    createdAt: iso(d.created_at),
    finishedAt: d.finished_at === null ? null : iso(d.finished_at),
  }));
}
