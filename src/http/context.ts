import type {} from 'fastify';
// The route schema's OpenAPI fields (`summary`, `tags`, `security`, `hide`).
import type {} from '@fastify/swagger';
import type { Logger } from 'pino';
import type { HttpConfig } from '../config.js';
import type { AcceptJobDeps, JobDispatcher } from '../jobs/accept-job.js';
import type { RunJobDeps } from '../streams/run-job.js';
import type { TokenCaller } from './auth.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** Who the request's bearer token names; null without a (known) token. Set before any route runs. */
    caller: TokenCaller | null;
  }
  interface FastifyContextConfig {
    /** Answered without a token and outside the per-token rate limit (probes, the OpenAPI document, metrics). */
    public?: boolean;
    /** A live-page route: rate-limited, but a request without a caller reaches it (it answers with the sign-in page). */
    page?: boolean;
  }
}

/** `GET /metrics`: what a Prometheus registry gives (`PipelineMetrics` in src/sinks/metrics.ts). */
export interface MetricsSource {
  readonly contentType: string;
  render(): Promise<string>;
}

/** What the service runs on: the process's clients (`openPipeline`), the dispatcher of accepted jobs, optionally metrics. */
export interface ServerDeps extends Omit<RunJobDeps, 'metrics'>, AcceptJobDeps {
  readonly logger: Logger;
  readonly dispatcher: JobDispatcher;
  /** Served at `GET /metrics` when given. */
  readonly metrics?: MetricsSource | undefined;
}

/** The service's settings: the configuration's `http` part and the job rules, plus tuning with defaults (`DEFAULT_HTTP_OPTIONS`). */
export interface ServerOptions {
  readonly http: Pick<HttpConfig, 'bodyLimitBytes' | 'rateLimitPerMinute' | 'maxStreamsPerToken' | 'heartbeatMs' | 'tokens' | 'adminTokens'>;
  /** Credits per delivered image (`IMAGEGEN_PRICE_PER_IMAGE`). */
  readonly pricePerImage: number;
  /** Largest stage quantity (`IMAGEGEN_MAX_QUANTITY`). */
  readonly maxQuantity: number;
  readonly drainTimeoutMs?: number | undefined;
  readonly readyTimeoutMs?: number | undefined;
  readonly presignExpiresSeconds?: number | undefined;
  /** How often an event stream reads the job's log when no notification came. Default `followJobEvents`'s. */
  readonly followPollMs?: number | undefined;
  /** `IMAGEGEN_WEBHOOK_ALLOW_LOCAL`: a job's webhook may go to this machine or a private network (tests). Default false. */
  readonly allowLocalWebhooks?: boolean | undefined;
  /** How long a live-page session lasts (`IMAGEGEN_PAGE_SESSION_SECONDS`). Default `DEFAULT_PAGE_TTLS.sessionSeconds`. */
  readonly pageSessionSeconds?: number | undefined;
  /** The image model jobs run on (`GEMINI_MODEL`): which aspect ratios and image sizes a stage may ask for. Default the default model. */
  readonly imageModel?: string | undefined;
}

/** What every route plugin gets. */
export interface RouteContext {
  readonly deps: ServerDeps;
  readonly options: Required<Omit<ServerOptions, 'followPollMs' | 'pageSessionSeconds' | 'allowLocalWebhooks' | 'imageModel'>> & Pick<ServerOptions, 'followPollMs' | 'allowLocalWebhooks' | 'imageModel'>;
  /** Open event streams per token key. */
  readonly streams: StreamCounter;
}

/** Counts open event streams per token, refusing one over the cap. */
export class StreamCounter {
  readonly #open = new Map<string, number>();
  constructor(readonly max: number) {}

  /** Takes a place for `key`; false when it holds `max` already. */
  tryOpen(key: string): boolean {
    const open = this.#open.get(key) ?? 0;
    if (open >= this.max) return false;
    this.#open.set(key, open + 1);
    return true;
  }

  /** Gives a place back. */
  close(key: string): void {
    const open = (this.#open.get(key) ?? 1) - 1;
    if (open <= 0) this.#open.delete(key);
    else this.#open.set(key, open);
  }

  /** Streams open now, all tokens. */
  get total(): number {
    let sum = 0;
    for (const n of this.#open.values()) sum += n;
    return sum;
  }
}

/** The parts of the deps a run of a stored job takes (a cancel ending a job nobody runs): not the metrics endpoint. */
export function runDepsOf(deps: ServerDeps): RunJobDeps {
  return { database: deps.database, store: deps.store, generator: deps.generator, limiter: deps.limiter, logger: deps.logger, pricing: deps.pricing, codec: deps.codec };
}
