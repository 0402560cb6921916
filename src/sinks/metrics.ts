/**
 * The Prometheus metrics of a process, declared once here (name, help, labels, buckets) and
 * fed from the typed events of its runs, never from scattered calls; what the events cannot
 * know (the provider limit now, jobs by status, credits, the queue) is read on scrape.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { defer, finalize, tap, type MonoTypeOperatorFunction } from 'rxjs';
import type { Logger } from 'pino';
import { countJobsByStatus, JOB_STATUSES, type Database, type JobStatusCount } from '../db/index.js';
import { ERROR_CLASSES } from '../domain/error-class.js';
import type { PipelineEvent } from '../domain/events.js';
import { attemptEndOf, type AttemptEnd } from './attempt-log.js';
import type { WebhookAttemptMetrics } from './webhook-dispatcher.js';

/** What an HTTP server needs to serve `GET /metrics`. */
export interface MetricsEndpoint {
  /** The exposition format's content type (Prometheus text 0.0.4). */
  readonly contentType: string;
  /** Every metric in the exposition format, read now. */
  render(): Promise<string>;
}

/** What a run reports its events to (`RunJobDeps.metrics`); see {@link PipelineMetrics.observeRun}. */
export interface RunMetrics {
  observeRun(shuttingDown: () => boolean): MonoTypeOperatorFunction<PipelineEvent>;
}

/**
 * What the limit gauges read from a provider limiter: its own limit (the calls this process
 * may have in flight now) and, for a worker's `FleetLimiter`, the fleet's limit it holds a
 * share of.
 */
export interface LimitReading {
  readonly limit: number;
  readonly share?: { readonly sharedLimit: number } | undefined;
}

/** How long figures read from the database (jobs, credits, queue) are reused between scrapes, by default, in ms. */
export const DEFAULT_METRICS_CACHE_MS = 5_000;

/** Settings of a {@link PipelineMetrics}. */
export interface PipelineMetricsConfig {
  /** Read on scrape: jobs by status, credits captured and released, jobs queued. */
  readonly database: Database;
  /** The limiter the limit gauges read; a worker attaches its own ({@link PipelineMetrics.attachLimiter}). */
  readonly limiter: LimitReading;
  /** How long database figures are reused. Default {@link DEFAULT_METRICS_CACHE_MS}; 0: read on every scrape. */
  readonly cacheMs?: number | undefined;
  /** Told when the database does not answer a scrape. */
  readonly logger?: Logger | undefined;
}

/** Label value of `class` for an attempt that delivered. */
const NO_CLASS = 'none';

/** Provider calls take from tens of ms (offline) to a minute or two (image models under load). */
const PROVIDER_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120];
/** A delivery is WebP conversion, one upload and one transaction: milliseconds to seconds. */
const DELIVERY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** One read of the database's figures; null: it failed. */
interface DatabaseFigures {
  readonly byStatus: readonly JobStatusCount[];
  readonly queueDepth: number;
}

/**
 * The metrics of one process, in a registry of its own (never prom-client's global one, so
 * several coexist: tests, a server with an in-process worker). No job id or user id is a
 * label: the series stay few whatever the traffic.
 *
 * From the events of every run observed ({@link observeRun}), counted by this process:
 *
 * | metric | meaning |
 * | --- | --- |
 * | `imagegen_attempts_total{class,outcome}` | attempts ended: `outcome` `delivered` (`class="none"`), `failed` (its error class) or `abandoned` (aborted by a shutdown; `class="cancelled"`), as the attempt log records them |
 * | `imagegen_images_delivered_total` | slots filled (one committed delivery each) |
 * | `imagegen_retries_total` | attempts started with number > 1 (replacements; numbering goes on across runs of a job) |
 * | `imagegen_retry_successes_total` | deliveries by an attempt with number > 1 |
 * | `imagegen_provider_latency_seconds` | attempt start to the end of its provider call (image, error or timeout); aborted calls are not observed |
 * | `imagegen_delivery_latency_seconds` | the provider's image to the committed delivery (WebP, upload, transaction) |
 * | `imagegen_attempts_in_flight` | attempts started and not ended (a run that ends takes its own out) |
 * | `imagegen_cost_usd_total{model,outcome}` | estimated provider cost of answers (price table), USD: `outcome` `delivered` or `failed` (failed answers are billed too), or `possibly_billed` (timed-out calls at one image's price) |
 *
 * Read on scrape:
 *
 * | metric | meaning |
 * | --- | --- |
 * | `imagegen_provider_limit` | the adaptive (AIMD) provider limit now: this process's, or in a fleet the fleet's shared limit |
 * | `imagegen_provider_limit_share` | provider calls this process may have in flight now: a worker's share of the fleet's limit (0 when it has no work), else the whole limit |
 * | `imagegen_jobs{status}` | jobs in the database per status (every process of a database reports the same) |
 * | `imagegen_queue_depth` | jobs waiting for a runner: the pg-boss queue's size when attached ({@link attachQueue}), else jobs `queued` |
 * | `imagegen_credits_captured_total`, `imagegen_credits_released_total` | credits over every job's row, the figures of the jobs' summaries (database-wide, like `imagegen_jobs`) |
 * | `imagegen_metrics_database_errors_total` | scrapes the database did not answer: then the database gauges read NaN and the credit counters keep their last value |
 *
 * Plus Node's process metrics (`imagegen_process_*`, `imagegen_nodejs_*`).
 *
 * @example
 * const { database, store, generator, limiter } = pipeline;
 * const metrics = new PipelineMetrics({ database, limiter });
 * runStoredJob({ database, store, generator, limiter, metrics }, jobId).subscribe();
 * const text = await metrics.render(); // serve it with `metrics.contentType`
 */
export class PipelineMetrics implements MetricsEndpoint, RunMetrics, WebhookAttemptMetrics {
  /** The private registry every metric here is in. */
  readonly registry = new Registry();
  readonly #config: PipelineMetricsConfig;
  #limiter: LimitReading;
  #queueSize: (() => Promise<number>) | undefined;
  /** The last read: `readAt` null while in flight. */
  #figures: { readAt: number | null; readonly value: Promise<DatabaseFigures | null> } | undefined;

  readonly #attempts: Counter<'class' | 'outcome'>;
  readonly #imagesDelivered: Counter;
  readonly #retries: Counter;
  readonly #retrySuccesses: Counter;
  readonly #providerLatency: Histogram;
  readonly #deliveryLatency: Histogram;
  readonly #inFlight: Gauge;
  readonly #databaseErrors: Counter;
  readonly #webhookAttempts: Counter<'outcome'>;
  readonly #cost: Counter<'model' | 'outcome'>;

  constructor(config: PipelineMetricsConfig) {
    this.#config = config;
    this.#limiter = config.limiter;
    const registers = [this.registry];
    this.#attempts = new Counter({
      name: 'imagegen_attempts_total',
      help: 'Attempts ended, by error class ("none" when delivered) and outcome (delivered, failed, abandoned by a shutdown).',
      labelNames: ['class', 'outcome'],
      registers,
    });
    // Every series exists from the start (at 0), so a rate over the first failure of a class is right.
    this.#attempts.inc({ class: NO_CLASS, outcome: 'delivered' }, 0);
    for (const errorClass of ERROR_CLASSES) this.#attempts.inc({ class: errorClass, outcome: 'failed' }, 0);
    this.#attempts.inc({ class: 'cancelled', outcome: 'abandoned' }, 0);
    this.#imagesDelivered = new Counter({ name: 'imagegen_images_delivered_total', help: 'Images delivered: slots filled, each by one committed delivery.', registers });
    this.#retries = new Counter({ name: 'imagegen_retries_total', help: 'Attempts started with number > 1 (replacements of an earlier attempt of the slot).', registers });
    this.#retrySuccesses = new Counter({ name: 'imagegen_retry_successes_total', help: 'Deliveries by an attempt with number > 1.', registers });
    this.#providerLatency = new Histogram({
      name: 'imagegen_provider_latency_seconds',
      help: 'From the start of an attempt to the end of its provider call (an image, an error or the attempt timeout); calls aborted by a cancel or shutdown are not observed.',
      buckets: PROVIDER_BUCKETS,
      registers,
    });
    this.#deliveryLatency = new Histogram({
      name: 'imagegen_delivery_latency_seconds',
      help: "From the provider's image to the committed delivery (WebP conversion, upload, delivery transaction).",
      buckets: DELIVERY_BUCKETS,
      registers,
    });
    this.#cost = new Counter({
      name: 'imagegen_cost_usd_total',
      help: 'Estimated provider cost of answers, USD, from the price table (list prices): outcome delivered or failed (failed answers are billed), or possibly_billed (timed-out calls, at one image each).',
      labelNames: ['model', 'outcome'],
      registers,
    });
    this.#inFlight = new Gauge({ name: 'imagegen_attempts_in_flight', help: 'Attempts of this process started and not yet ended.', registers });
    this.#webhookAttempts = new Counter({
      name: 'imagegen_webhook_attempts_total',
      help: 'Webhook attempts sent by this process, by outcome: delivered (a 2xx), http_3xx/http_4xx/http_5xx, or the error (timeout, connection_reset, connection_refused, unreachable, dns, forbidden_address, tls, network).',
      labelNames: ['outcome'],
      registers,
    });
    this.#webhookAttempts.inc({ outcome: 'delivered' }, 0);
    const metrics = this;
    this.#databaseErrors = new Counter({
      name: 'imagegen_metrics_database_errors_total',
      help: 'Scrapes whose database read failed: the database gauges then read NaN and the credit counters keep their last value.',
      registers,
      // So a scrape counts its own failed read.
      async collect() {
        await metrics.#readFigures();
      },
    });
    new Gauge({
      name: 'imagegen_provider_limit',
      help: "The adaptive (AIMD) provider limit now: this process's, or in a fleet the fleet's limit shared by the workers of one provider key.",
      registers,
      collect() {
        this.set(metrics.#limiter.share?.sharedLimit ?? metrics.#limiter.limit);
      },
    });
    new Gauge({
      name: 'imagegen_provider_limit_share',
      help: "Provider calls this process may have in flight now: a worker's share of the fleet's limit (0 while it has no work), else the whole limit.",
      registers,
      collect() {
        this.set(metrics.#limiter.limit);
      },
    });
    new Gauge({
      name: 'imagegen_jobs',
      help: 'Jobs in the database by status (database-wide: every process of one database reports the same).',
      labelNames: ['status'],
      registers,
      async collect() {
        const figures = await metrics.#readFigures();
        for (const status of JOB_STATUSES) this.set({ status }, figures?.byStatus.find((s) => s.status === status)?.jobs ?? Number.NaN);
      },
    });
    new Gauge({
      name: 'imagegen_queue_depth',
      help: "Jobs waiting for a runner: the job queue's size (pg-boss) in a worker, else the jobs queued in the database.",
      registers,
      async collect() {
        this.set((await metrics.#readFigures())?.queueDepth ?? Number.NaN);
      },
    });
    const creditCounter = (name: string, help: string, of: (s: JobStatusCount) => number) =>
      new Counter({
        name,
        help,
        registers,
        async collect() {
          const figures = await metrics.#readFigures();
          // Unread: the last value stays (a counter never goes back).
          if (figures === null) return;
          this.reset();
          this.inc(figures.byStatus.reduce((sum, s) => sum + of(s), 0));
        },
      });
    creditCounter('imagegen_credits_captured_total', 'Credits captured by deliveries, over every job in the database (the sum of the jobs\' summaries).', (s) => s.creditsCaptured);
    creditCounter('imagegen_credits_released_total', 'Reserved credits given back by finished jobs, over every job in the database (the sum of the jobs\' summaries).', (s) => s.creditsReleased);

    collectDefaultMetrics({ register: this.registry, prefix: 'imagegen_' });
  }

  /** The exposition format's content type. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Every metric in the exposition format; database figures at most `cacheMs` old. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  /** From now on the limit gauges read `limiter` (a worker's own, built after the metrics). */
  attachLimiter(limiter: LimitReading): void {
    this.#limiter = limiter;
  }

  /** From now on `imagegen_queue_depth` is `size()` (a worker's pg-boss queue) instead of the jobs `queued`. */
  attachQueue(size: () => Promise<number>): void {
    this.#queueSize = size;
    this.#figures = undefined;
  }

  /**
   * Counts the events of one run as they pass, unchanged. Each subscription keeps its own
   * attempts in flight; when the run ends (complete, error, unsubscribe) those it did not
   * see end leave `imagegen_attempts_in_flight`, so a run torn down mid-attempt leaks none.
   * `shuttingDown` says whether the run was stopped, as the attempt log asks it: an attempt
   * aborted then is `abandoned`.
   *
   * ```
   * events   --S--s1--s2--f1--d2--F--|
   * in flight    1   2   1   0
   * output   --S--s1--s2--f1--d2--F--|     the same events, same times
   * ```
   *
   * @example
   * engine$.pipe(metrics.observeRun(() => signals.stopped));
   */
  /** Counts one webhook attempt by its outcome (`WebhookDispatcher`). */
  webhookAttempt(outcome: string): void {
    this.#webhookAttempts.inc({ outcome });
  }

  observeRun(shuttingDown: () => boolean): MonoTypeOperatorFunction<PipelineEvent> {
    return (events$) =>
      defer(() => {
        const inFlight = new Set<string>();
        const ended = (event: { stage: number; slot: number }) => {
          if (inFlight.delete(`${event.stage}/${event.slot}`)) this.#inFlight.dec();
        };
        return events$.pipe(
          tap((event) => {
            switch (event.type) {
              case 'attempt:started':
                inFlight.add(`${event.stage}/${event.slot}`);
                this.#inFlight.inc();
                if (event.attempt > 1) this.#retries.inc();
                return;
              case 'attempt:failed':
                ended(event);
                this.#countEnd(event.errorClass, attemptEndOf(event, shuttingDown()));
                if (event.providerLatencyMs !== null) this.#providerLatency.observe(event.providerLatencyMs / 1000);
                if (event.cost !== undefined) {
                  if (event.cost.usd !== null) this.#cost.inc({ model: event.cost.model, outcome: 'failed' }, event.cost.usd);
                  if (event.cost.possiblyBilledUsd > 0) this.#cost.inc({ model: event.cost.model, outcome: 'possibly_billed' }, event.cost.possiblyBilledUsd);
                }
                return;
              case 'slot:delivered':
                ended(event);
                this.#countEnd(NO_CLASS, 'delivered');
                this.#imagesDelivered.inc();
                if (event.attempt > 1) this.#retrySuccesses.inc();
                this.#providerLatency.observe(event.providerLatencyMs / 1000);
                this.#deliveryLatency.observe((event.latencyMs - event.providerLatencyMs) / 1000);
                if (event.cost?.usd != null) this.#cost.inc({ model: event.cost.model, outcome: 'delivered' }, event.cost.usd);
                return;
              default:
                return;
            }
          }),
          finalize(() => {
            this.#inFlight.dec(inFlight.size);
            inFlight.clear();
          }),
        );
      });
  }

  #countEnd(errorClass: string, outcome: AttemptEnd): void {
    this.#attempts.inc({ class: errorClass, outcome });
  }

  /**
   * The database's figures, one read per scrape however many metrics ask (they ask at once:
   * a read in flight is shared), reused for `cacheMs` after it ended.
   */
  #readFigures(): Promise<DatabaseFigures | null> {
    const cacheMs = this.#config.cacheMs ?? DEFAULT_METRICS_CACHE_MS;
    const cached = this.#figures;
    if (cached && (cached.readAt === null || Date.now() - cached.readAt < cacheMs)) return cached.value;
    const value = this.#read();
    const entry: { readAt: number | null; readonly value: Promise<DatabaseFigures | null> } = { readAt: null, value };
    this.#figures = entry;
    void value.then(() => (entry.readAt = Date.now()));
    return value;
  }

  /** One read of the database's figures; null (never a rejection) when it fails. */
  async #read(): Promise<DatabaseFigures | null> {
    try {
      const byStatus = await countJobsByStatus(this.#config.database);
      const queueDepth = this.#queueSize ? await this.#queueSize() : (byStatus.find((s) => s.status === 'queued')?.jobs ?? 0);
      return { byStatus, queueDepth };
    } catch (error) {
      this.#databaseErrors.inc();
      this.#config.logger?.warn({ err: error }, 'metrics: the database did not answer; its figures read NaN in this scrape');
      return null;
    }
  }
}
