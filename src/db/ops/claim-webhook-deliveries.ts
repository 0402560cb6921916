import { sql } from 'kysely';
import type { Database } from '../database.js';
import { dbTimeFromNow } from '../internal/db-time.js';

/** A delivery a dispatcher has claimed: what it sends, and the state its backoff needs. */
export interface ClaimedWebhookDelivery {
  /** `msg_<jobId>_<seq>`: the `webhook-id` header. */
  readonly id: string;
  readonly jobId: string;
  readonly seq: number;
  readonly userId: string;
  readonly eventType: string;
  readonly url: string;
  /** The logged event it reports, with its `seq`. */
  readonly payload: unknown;
  /** Attempts made so far (all windows). */
  readonly attempts: number;
  /** Failed attempts of this retry window: the backoff's exponent. */
  readonly retryAttempt: number;
  /** When the event committed (the body's `timestamp`). */
  readonly createdAt: Date;
}

/**
 * Claims up to `limit` due deliveries (`pending`, `next_attempt_at` passed) for `owner`,
 * oldest due first: each is moved `leaseMs` into the future and marked as `owner`'s, so
 * no other dispatcher takes it while this one sends. A dispatcher that dies mid-send
 * holds it only until then; another one retries it after the lease (at least once).
 *
 * Locking: the rows are picked `for update skip locked` in the same statement that
 * claims them: two dispatchers never wait on each other and never claim the same row
 * (the second skips what the first has locked, and after the first commits the row
 * is no longer due). Time is the database's (`now()`), the same for every host.
 */
export async function claimWebhookDeliveries(database: Database, owner: string, limit: number, leaseMs: number): Promise<ClaimedWebhookDelivery[]> {
  if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`limit must be a positive integer, got ${limit}`);
  const { rows } = await sql<{
    id: string;
    job_id: string;
    seq: number;
    user_id: string;
    event_type: string;
    url: string;
    payload: unknown;
    attempts: number;
    retry_attempt: number;
    created_at: Date;
  }>`
    with due as (
      select id from webhook_deliveries
      where status = 'pending' and next_attempt_at <= now()
      order by next_attempt_at, id
      limit ${limit}
      for update skip locked
    )
    update webhook_deliveries d
    set next_attempt_at = ${dbTimeFromNow(leaseMs)}, claimed_by = ${owner}
    from due
    where d.id = due.id
    returning d.id, d.job_id, d.seq, d.user_id, d.event_type, d.url, d.payload, d.attempts, d.retry_attempt, d.created_at
  `.execute(database.db);
  return rows
    .map((r) => ({
      id: r.id,
      jobId: r.job_id,
      seq: r.seq,
      userId: r.user_id,
      eventType: r.event_type,
      url: r.url,
      payload: r.payload,
      attempts: r.attempts,
      retryAttempt: r.retry_attempt,
      createdAt: new Date(r.created_at),
    }))
    .sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.seq - b.seq);
}
