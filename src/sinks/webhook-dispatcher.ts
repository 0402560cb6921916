import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import { asyncScheduler, catchError, EMPTY, from, interval, merge, startWith, Subject, type SchedulerLike, type Subscription } from 'rxjs';
import {
  claimWebhookDeliveries,
  countUnattemptedWebhooks,
  getWebhookSecret,
  recordWebhookAttempt,
  releaseWebhookClaims,
  WEBHOOK_DELIVERIES_CHANNEL,
  type ClaimedWebhookDelivery,
  type Database,
} from '../db/index.js';
import type { RandomSource } from '../domain/random.js';
import { fullJitterBackoff } from '../engine/full-jitter-backoff.js';
import { exhaustMapWithTrailing } from '../operators/exhaust-map-with-trailing.js';
import { listenChannel } from '../sources/listen-channel.js';
import { sendWebhook, type WebhookOutcome } from './webhook-sender.js';
import type { LookupAll } from './webhook-target.js';

/** The dispatcher's defaults (`IMAGEGEN_WEBHOOK_*` in src/config.ts). */
export const DEFAULT_WEBHOOK_OPTIONS = Object.freeze({
  /** One attempt, resolve to answer headers (`IMAGEGEN_WEBHOOK_TIMEOUT_MS`). */
  timeoutMs: 10_000,
  /** How long after its event a delivery is retried before it is `failed` (`IMAGEGEN_WEBHOOK_RETRY_WINDOW_SECONDS`): 24 h. */
  retryWindowMs: 24 * 60 * 60 * 1000,
  /** Full-jitter backoff between attempts (`IMAGEGEN_WEBHOOK_BACKOFF_BASE_MS`, `_MAX_MS`): up to 5 s after the first failure, doubling, at most 1 h. */
  backoffBaseMs: 5_000,
  backoffMaxMs: 60 * 60 * 1000,
  /** How often the outbox is read when no notification came (`IMAGEGEN_WEBHOOK_POLL_MS`). */
  pollMs: 1_000,
  /** Sends in flight per process (`IMAGEGEN_WEBHOOK_CONCURRENCY`). */
  concurrency: 8,
  /** A claim lasts the timeout plus this: time to record the attempt before another dispatcher may retry. */
  claimMarginMs: 5_000,
});

/** What a dispatcher reports each attempt to (`PipelineMetrics`). */
export interface WebhookAttemptMetrics {
  /** `outcome`: `delivered`, `http_<status class>` (e.g. `http_5xx`), or an error kind (`timeout`, `connection_reset`, ...). */
  webhookAttempt(outcome: string): void;
}

export interface WebhookDispatcherDeps {
  readonly database: Database;
  readonly logger?: Logger | undefined;
  /** The `data` of a `job.finished` webhook: the job's summary (`jobSummary`), read when it is sent. */
  readonly describeJob: (jobId: string) => Promise<unknown>;
  readonly metrics?: WebhookAttemptMetrics | undefined;
}

export interface WebhookDispatcherOptions {
  readonly timeoutMs?: number | undefined;
  readonly retryWindowMs?: number | undefined;
  readonly backoffBaseMs?: number | undefined;
  readonly backoffMaxMs?: number | undefined;
  readonly pollMs?: number | undefined;
  readonly concurrency?: number | undefined;
  /** `IMAGEGEN_WEBHOOK_ALLOW_LOCAL`: send to this machine and private networks (tests). Default false. */
  readonly allowLocal?: boolean | undefined;
  /** Host resolution (default the system's). */
  readonly lookup?: LookupAll | undefined;
  /** Jitter (default `Math.random`). */
  readonly random?: RandomSource | undefined;
  /** The poll's clock (default `asyncScheduler`). */
  readonly scheduler?: SchedulerLike | undefined;
  /** The claim owner id; default `webhooks:<host>:<pid>:<uuid>`. */
  readonly owner?: string | undefined;
}

interface InFlight {
  readonly jobId: string;
  readonly abort: AbortController;
  readonly done: Promise<void>;
}

/**
 * Sends the webhook outbox (`webhook_deliveries`) at least once, signed (Standard
 * Webhooks), in any process that runs one (`imagegen worker`, `serve`, and `run` while
 * its job runs). Many dispatchers may share one database.
 *
 * ```
 * NOTIFY imagegen_webhooks ─┐
 * poll (pollMs) ────────────┼─► claim due rows (skip locked, lease) ─► send (signed POST) ─► record attempt
 * a send ended ─────────────┘      one claim at a time, up to `concurrency` sends     2xx: delivered
 *                                                                                      else: next after full-jitter
 *                                                                                      backoff, failed after the window
 * ```
 *
 * - **Claims**: `claimWebhookDeliveries` takes due rows `for update skip locked` and
 *   moves them a lease (timeout + margin) ahead: two dispatchers never send the same
 *   delivery in the common case; one that dies mid-send lets another retry after the lease.
 * - **Retries**: any non-2xx answer (3xx included: redirects are not followed) or error
 *   is a failed attempt, recorded with its status or error kind; the next one comes after
 *   `fullJitterBackoff(failures, Retry-After)`, no later than the window's end; a failure
 *   after the window is `failed`.
 * - **Stop**: no new claims (a claim on its way is awaited within the grace; what it took
 *   is given back, not sent);
 *   sends in flight finish within the grace, the rest are aborted and their claims given
 *   back (due now, no attempt recorded).
 * - Logs name the delivery, job, event type and outcome, never the URL or the secret.
 */
export class WebhookDispatcher {
  readonly #deps: WebhookDispatcherDeps;
  readonly #logger: Logger | undefined;
  readonly #options: Required<Omit<WebhookDispatcherOptions, 'lookup' | 'owner'>> & Pick<WebhookDispatcherOptions, 'lookup'>;
  readonly #owner: string;
  readonly #inFlight = new Map<string, InFlight>();
  readonly #wake = new Subject<void>();
  #loop: Subscription | null = null;
  /** The claim round in flight (its database call), awaited by `stop`. */
  #round: Promise<void> | null = null;
  #stopping = false;

  constructor(deps: WebhookDispatcherDeps, options: WebhookDispatcherOptions = {}) {
    this.#deps = deps;
    this.#owner = options.owner ?? `webhooks:${hostname()}:${process.pid}:${randomUUID()}`;
    this.#logger = deps.logger?.child({ dispatcher: this.#owner });
    this.#options = {
      timeoutMs: options.timeoutMs ?? DEFAULT_WEBHOOK_OPTIONS.timeoutMs,
      retryWindowMs: options.retryWindowMs ?? DEFAULT_WEBHOOK_OPTIONS.retryWindowMs,
      backoffBaseMs: options.backoffBaseMs ?? DEFAULT_WEBHOOK_OPTIONS.backoffBaseMs,
      backoffMaxMs: options.backoffMaxMs ?? DEFAULT_WEBHOOK_OPTIONS.backoffMaxMs,
      pollMs: options.pollMs ?? DEFAULT_WEBHOOK_OPTIONS.pollMs,
      concurrency: options.concurrency ?? DEFAULT_WEBHOOK_OPTIONS.concurrency,
      allowLocal: options.allowLocal ?? false,
      random: options.random ?? Math.random,
      scheduler: options.scheduler ?? asyncScheduler,
      lookup: options.lookup,
    };
  }

  /** The claim owner id of this dispatcher. */
  get owner(): string {
    return this.#owner;
  }

  /** Starts sending; idempotent. */
  start(): void {
    if (this.#loop !== null || this.#stopping) return;
    const { database } = this.#deps;
    const heard$ = listenChannel(database, WEBHOOK_DELIVERIES_CHANNEL).pipe(
      catchError((error: unknown) => {
        // The poll still finds every due row; a lost LISTEN only slows the first try down.
        this.#logger?.warn({ err: error }, 'webhook notifications unavailable; polling only');
        return EMPTY;
      }),
    );
    this.#loop = merge(heard$, interval(this.#options.pollMs, this.#options.scheduler), this.#wake)
      .pipe(
        startWith(null),
        // One claim at a time; signals during a claim collapse into one more claim after it.
        exhaustMapWithTrailing(() => from(this.#claimRound())),
      )
      .subscribe();
  }

  /**
   * Stops: no new claims; waits up to `graceMs` (default the attempt timeout) for a claim on its
   * way and the sends in flight, then aborts the rest and gives their claims back. Resolves
   * when every send has ended.
   */
  async stop(graceMs: number = this.#options.timeoutMs): Promise<void> {
    this.#stopping = true;
    this.#loop?.unsubscribe();
    this.#loop = null;
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    // A claim still on its way to the database ends first (what it claims is given back), so
    // the process does not close the database under it nor leave rows claimed for a lease;
    // within the grace: a database that does not answer does not hold the stop (its claims
    // lapse after their lease).
    if (this.#round !== null) await Promise.race([this.#round, graceOver]);
    const pending = [...this.#inFlight.values()];
    if (pending.length === 0) {
      clearTimeout(timer);
      return;
    }
    await Promise.race([Promise.all(pending.map((p) => p.done)), graceOver]);
    clearTimeout(timer);
    for (const flight of this.#inFlight.values()) flight.abort.abort();
    await Promise.all([...this.#inFlight.values()].map((p) => p.done));
  }

  /**
   * Waits until every delivery of job `jobId` has had its first attempt (or `maxWaitMs`
   * passed); returns how many still had none. `imagegen run` calls it before it exits,
   * so the embedded single-process user gets the job's webhooks; retries left over are
   * sent by the next process that runs a dispatcher.
   */
  async settle(jobId: string, maxWaitMs: number): Promise<number> {
    const deadline = Date.now() + maxWaitMs;
    for (;;) {
      this.#wake.next();
      const left = await countUnattemptedWebhooks(this.#deps.database, jobId);
      if (left === 0 || Date.now() >= deadline) return left;
      await new Promise((resolve) => setTimeout(resolve, Math.min(100, Math.max(1, deadline - Date.now()))));
    }
  }

  /** Claims what is due (up to the free places) and starts sending it; the round is {@link #round} until it ends. */
  #claimRound(): Promise<void> {
    const round = this.#claim().finally(() => {
      if (this.#round === round) this.#round = null;
    });
    this.#round = round;
    return round;
  }

  async #claim(): Promise<void> {
    const free = this.#options.concurrency - this.#inFlight.size;
    if (this.#stopping || free <= 0) return;
    let claimed: ClaimedWebhookDelivery[];
    try {
      claimed = await claimWebhookDeliveries(this.#deps.database, this.#owner, free, this.#options.timeoutMs + DEFAULT_WEBHOOK_OPTIONS.claimMarginMs);
    } catch (error) {
      if (!this.#stopping) this.#logger?.warn({ err: error }, 'claiming webhook deliveries failed; trying again at the next poll');
      return;
    }
    if (this.#stopping) {
      // Stopped while claiming: nothing is sent now; the claims go back (due now, no attempt).
      await releaseWebhookClaims(this.#deps.database, this.#owner, claimed.map((d) => d.id)).catch((error: unknown) => {
        this.#logger?.warn({ err: error }, 'giving back claims taken as the dispatcher stopped failed; they are due again after their lease');
      });
      return;
    }
    for (const delivery of claimed) {
      const abort = new AbortController();
      const done = this.#deliver(delivery, abort.signal)
        .catch((error: unknown) => {
          // The claim lapses after its lease and another attempt follows: at least once.
          this.#logger?.warn({ err: error, webhookId: delivery.id, jobId: delivery.jobId }, 'webhook attempt could not be sent or recorded; retried after the claim lapses');
        })
        .finally(() => {
          this.#inFlight.delete(delivery.id);
          if (!this.#stopping) this.#wake.next();
        });
      this.#inFlight.set(delivery.id, { jobId: delivery.jobId, abort, done });
    }
  }

  /** One attempt of one claimed delivery: sign, send, record. */
  async #deliver(delivery: ClaimedWebhookDelivery, signal: AbortSignal): Promise<void> {
    const { database } = this.#deps;
    const secret = await getWebhookSecret(database, delivery.userId);
    const data = delivery.eventType === 'job.finished' ? await this.#deps.describeJob(delivery.jobId) : delivery.payload;
    const body = JSON.stringify({ type: delivery.eventType, timestamp: delivery.createdAt.toISOString(), data });
    const at = new Date();
    const outcome = await sendWebhook(
      { url: delivery.url, id: delivery.id, body, secret },
      { timeoutMs: this.#options.timeoutMs, allowLocal: this.#options.allowLocal, signal, ...(this.#options.lookup ? { lookup: this.#options.lookup } : {}) },
    );
    if (outcome.kind === 'aborted') {
      await releaseWebhookClaims(database, this.#owner, [delivery.id]);
      this.#logger?.info({ webhookId: delivery.id, jobId: delivery.jobId }, 'webhook attempt abandoned by shutdown; due again');
      return;
    }
    const delivered = outcome.kind === 'answered' && outcome.statusCode >= 200 && outcome.statusCode < 300;
    const retryDelayMs = fullJitterBackoff(delivery.retryAttempt + 1, outcome.kind === 'answered' ? outcome.retryAfterMs : undefined, this.#options.random, {
      baseMs: this.#options.backoffBaseMs,
      maxMs: this.#options.backoffMaxMs,
      maxRetryAfterMs: this.#options.backoffMaxMs,
    });
    const status = await recordWebhookAttempt(database, {
      id: delivery.id,
      owner: this.#owner,
      at,
      durationMs: outcome.durationMs,
      statusCode: outcome.kind === 'answered' ? outcome.statusCode : null,
      error: outcome.kind === 'error' ? outcome.error : null,
      delivered,
      retryDelayMs,
      retryWindowMs: this.#options.retryWindowMs,
    });
    const label = outcomeLabel(outcome, delivered);
    this.#deps.metrics?.webhookAttempt(label);
    const fields = { webhookId: delivery.id, jobId: delivery.jobId, type: delivery.eventType, attempt: delivery.attempts + 1, outcome: label, durationMs: outcome.durationMs, status };
    if (delivered) this.#logger?.info(fields, 'webhook delivered');
    else if (status === 'failed') this.#logger?.warn(fields, 'webhook failed: retry window over');
    else this.#logger?.info({ ...fields, retryInMs: retryDelayMs }, 'webhook attempt failed; will retry');
  }
}

function outcomeLabel(outcome: Exclude<WebhookOutcome, { kind: 'aborted' }>, delivered: boolean): string {
  if (delivered) return 'delivered';
  if (outcome.kind === 'answered') return `http_${Math.floor(outcome.statusCode / 100)}xx`;
  return outcome.error;
}
