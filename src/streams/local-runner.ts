import { ReplaySubject, type Subscription } from 'rxjs';
import type { Logger } from 'pino';
import { claimUnattendedJob, JobLeasedError, newLeaseOwner, retryTransient } from '../db/index.js';
import type { PipelineEvent } from '../domain/events.js';
import type { JobDispatcher } from '../jobs/accept-job.js';
import { DEFAULT_RUN_OPTIONS, runStoredJob, type RunJobDeps, type RunJobOptions } from './run-job.js';
import { DEFAULT_WORKER_JOBS } from './worker.js';

export interface LocalRunnerOptions {
  /** Jobs run at once (they share the process's attempt limiter). Default {@link DEFAULT_WORKER_JOBS} (`IMAGEGEN_WORKER_JOBS`). */
  readonly jobConcurrency?: number | undefined;
  /** The runs' options (engine settings, grace period, lease TTL). */
  readonly engine?: RunJobOptions | undefined;
}

/**
 * Runs accepted jobs in this process, the way `imagegen run` runs a stored job
 * (`runStoredJob`), at most `jobConcurrency` at once, in the order they came: the service
 * on the embedded database, where no other process can run them. A dispatcher
 * (`JobDispatcher`) of the service.
 *
 * - `dispatch` queues a job once: a job queued or running here is not queued again.
 * - `resumeUnfinished` takes the jobs a previous process left unfinished (killed, or
 *   stopped: handed back) and queues them; each run resumes its job exactly.
 * - `stop` stops taking slots and jobs, lets in-flight attempts finish (aborted after the
 *   grace period), hands unfinished jobs back, and resolves when every run has ended.
 *
 * One lease owner id for the process, as a worker has: a job this process holds is never
 * run twice here, and a run cut off by a crash is taken over by the next start.
 */
export class LocalJobRunner implements JobDispatcher {
  readonly #deps: RunJobDeps;
  readonly #logger: Logger | undefined;
  readonly #slots: number;
  readonly #engine: RunJobOptions;
  readonly #owner = newLeaseOwner();
  readonly #pending: string[] = [];
  readonly #running = new Map<string, Subscription>();
  // Replayed: a run started just as the stop came still sees it.
  readonly #stop$ = new ReplaySubject<void>(1);
  #stopping = false;
  #idle: (() => void) | null = null;

  constructor(deps: RunJobDeps, options: LocalRunnerOptions = {}) {
    this.#deps = deps;
    this.#logger = deps.logger?.child({ runner: this.#owner });
    this.#slots = options.jobConcurrency ?? DEFAULT_WORKER_JOBS;
    this.#engine = options.engine ?? {};
  }

  /** Jobs running now and jobs waiting for a place. */
  get load(): { readonly running: readonly string[]; readonly pending: readonly string[] } {
    return { running: [...this.#running.keys()], pending: [...this.#pending] };
  }

  async dispatch(jobId: string): Promise<void> {
    if (this.#stopping || this.#running.has(jobId) || this.#pending.includes(jobId)) return;
    this.#pending.push(jobId);
    this.#pump();
  }

  /** Queues every unfinished job nobody runs (a previous process's); returns their ids. */
  async resumeUnfinished(): Promise<string[]> {
    const ttlMs = this.#engine.leaseTtlMs ?? DEFAULT_RUN_OPTIONS.leaseTtlMs;
    const found: string[] = [];
    for (;;) {
      // Grace 0: on the embedded database no other process can be about to run a job.
      const job = await retryTransient(() => claimUnattendedJob(this.#deps.database, this.#owner, ttlMs, 0));
      if (job === null || found.includes(job.jobId)) break;
      found.push(job.jobId);
      this.#logger?.warn({ jobId: job.jobId, previousOwner: job.previousOwner }, 'unfinished job of a previous process: resuming');
      await this.dispatch(job.jobId);
    }
    return found;
  }

  /** Stops (see the class comment) and resolves once every run has ended. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#pending.length = 0;
    this.#stop$.next();
    if (this.#running.size === 0) return;
    await new Promise<void>((resolve) => (this.#idle = resolve));
  }

  #pump(): void {
    while (!this.#stopping && this.#running.size < this.#slots && this.#pending.length > 0) {
      this.#start(this.#pending.shift() as string);
    }
  }

  #start(jobId: string): void {
    let last: PipelineEvent | undefined;
    const settle = (error?: unknown): void => {
      this.#running.delete(jobId);
      if (error instanceof JobLeasedError) this.#logger?.info({ jobId, holder: error.owner }, 'job is run by another process: not run here');
      else if (error !== undefined) this.#logger?.error({ err: error, jobId }, 'run failed; the job stays resumable (the next start resumes it)');
      else if (last?.type !== 'job:finished') this.#logger?.info({ jobId }, 'run handed back: the next start resumes it');
      if (this.#running.size === 0 && this.#idle) this.#idle();
      this.#pump();
    };
    const subscription = runStoredJob(this.#deps, jobId, { ...this.#engine, leaseOwner: this.#owner, stop$: this.#stop$ }).subscribe({
      next: (event) => (last = event),
      error: (error: unknown) => settle(error),
      complete: () => settle(),
    });
    // A run that ended while subscribing (a job that had ended: its replay) has settled already.
    if (!subscription.closed) this.#running.set(jobId, subscription);
  }
}
