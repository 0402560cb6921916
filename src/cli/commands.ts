/** One function per `imagegen` command: what it reads, what it prints, its exit code. */
import { join } from 'node:path';
import { lastValueFrom, takeWhile, tap } from 'rxjs';
import { ConfigError } from '../config.js';
import { FINAL_JOB_STATUSES, findJobRunner, getBalance, grantCredits, JobNotFoundError, jobStats, listWorkers, retryTransient } from '../db/index.js';
import type { JobRowStatus, JobStats } from '../db/index.js';
import { parseCreditAmount } from '../domain/credit-amount.js';
import { engineOptionsOf, type Pipeline } from '../pipeline.js';
import { readJobFile } from '../sources/job-file.js';
import { watchJob, type WatchedEvent } from '../sources/watch-job.js';
import { runStoredJob } from '../streams/run-job.js';
import { refuseOnEmptyDatabase, submitSpec } from '../jobs/submit-job.js';
import { cancelJob, JobEndedError } from '../jobs/cancel-job.js';
import { startWebhookDispatcher } from '../jobs/webhooks.js';
import { cmdWebhooks, cmdWebhooksSecret, settleRunWebhooks } from './webhooks.js';
import { EXIT, UnavailableError, UsageError } from './failures.js';
import { formatSummary, formatUsd, jobSummary } from './summary.js';
import { ProgressView } from './progress-view.js';
import { exitCodeOf, print, withJobsPipeline, withPipeline, loggedSignalNotice, shutdownSignals, type Invocation, embeddedDatabaseMissing } from './invocation.js';

async function cmdRun(inv: Invocation): Promise<number> {
  const { config, json } = inv;
  const file = inv.args[0] as string;
  for (const flag of ['port', 'host'] as const) {
    if (inv.values[flag] !== undefined && !inv.values.open) throw new UsageError(`--${flag}`, 'is where run --open serves the live page; give it with --open');
  }
  // Everything that can be checked without the database is checked first: a bad file writes nothing.
  const jobFile = await readJobFile(file, { maxQuantity: config.maxQuantity, allowLocalWebhooks: config.webhooks.allowLocal, imageModel: config.gemini.model });
  // A fresh data folder holds no attachment, credit or job: refuse what needs one without creating the database.
  if (embeddedDatabaseMissing(config)) refuseOnEmptyDatabase(jobFile.spec, { pricePerImage: config.pricePerImage });
  return withJobsPipeline(inv, async (pipeline) => {
    const { jobId, created } = await submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage, allowLocalWebhooks: config.webhooks.allowLocal });
    pipeline.logger.info({ jobId, created, provider: config.provider }, created ? 'job submitted' : 'job exists: resuming or reporting');
    // Webhooks are sent while the job runs (this job's and any others due on this database); see settleRunWebhooks.
    const webhooks = startWebhookDispatcher(pipeline, config.webhooks);
    // Fastify is loaded only when the page is served.
    const page = inv.values.open ? await (await import('./run-page.js')).openRunPage(pipeline, config, { jobId, userId: jobFile.spec.userId, port: inv.values.port === undefined ? undefined : config.http.port }) : undefined;
    if (page) process.stderr.write(`live page: ${page.url}\n`);
    const view = new ProgressView(process.stderr);
    const signals = shutdownSignals();
    try {
      await lastValueFrom(
        runStoredJob(pipeline, jobId, { ...engineOptionsOf(config), stop$: signals.stop$ }).pipe(tap((event) => view.handle(event))),
        { defaultValue: null },
      );
    } finally {
      signals.dispose();
      await page?.close();
      await settleRunWebhooks(webhooks, jobId, config.webhooks, pipeline.logger);
    }
    const summary = await retryTransient(() => jobSummary(pipeline.database, jobId));
    print(json, summary, formatSummary(summary));
    return exitCodeOf(summary);
  });
}

async function cmdStatus(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  return withPipeline(inv, async (pipeline) => {
    const summary = await jobSummary(pipeline.database, jobId);
    if (summary.status === 'running' || summary.status === 'queued') {
      // A job someone runs now also says who (a worker, or a `run` process); otherwise the summary is as ever.
      const runner = await findJobRunner(pipeline.database, jobId);
      if (runner) {
        const runs = `  runner: ${runner.worker ? 'worker' : 'process'} ${runner.name} pid ${runner.pid} (${runner.id}), lease until ${runner.leaseUntil}`;
        print(inv.json, { ...summary, runner }, `${formatSummary(summary)}\n${runs}`);
        return 0;
      }
    }
    print(inv.json, summary, formatSummary(summary));
    return summary.status === 'completed' || summary.status === 'running' || summary.status === 'queued' ? 0 : EXIT.short;
  });
}

async function cmdWorkers(inv: Invocation): Promise<number> {
  // The embedded database has no workers: `run` runs its job in its own process.
  const workers = inv.config.databaseUrl ? await withPipeline(inv, (pipeline) => listWorkers(pipeline.database)) : [];
  const lines = workers.map(
    (w) => `${w.id}  ${w.name} pid ${w.pid}  started ${w.startedAt}  heartbeat ${w.lastHeartbeatAt}  jobs ${w.jobs.length > 0 ? w.jobs.join(',') : '-'}  attempts in flight ${w.attemptsInFlight}  permits ${w.held}/${w.concurrency}`,
  );
  print(inv.json, { workers }, workers.length === 0 ? 'no live workers' : lines.join('\n'));
  return 0;
}

/** Why `watch` of an unfinished job stops after the snapshot on the embedded database. */
export const EMBEDDED_WATCH_MESSAGE = 'no process can run this job while you watch it on the embedded database; use PostgreSQL for watch';

async function cmdWatch(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  // PGlite serves one process at a time: while we hold it, nobody can run the job, so no event can ever come.
  const embedded = !inv.config.databaseUrl;
  return withPipeline(inv, async (pipeline) => {
    let status = 'running' as JobRowStatus;
    await lastValueFrom(
      watchJob(pipeline.database, jobId, { logger: pipeline.logger }).pipe(
        tap((event) => {
          if (event.type === 'snapshot' || event.type === 'job:finished') status = event.status as JobRowStatus;
          process.stdout.write(`${inv.json ? JSON.stringify(event) : describeWatched(event)}\n`);
        }),
        takeWhile((event) => !(embedded && event.type === 'snapshot'), true),
      ),
      { defaultValue: null },
    );
    if (!FINAL_JOB_STATUSES.includes(status)) throw new UnavailableError(EMBEDDED_WATCH_MESSAGE);
    return status === 'completed' ? 0 : EXIT.short;
  });
}

function describeWatched(event: WatchedEvent): string {
  if (event.type === 'snapshot') return `${event.jobId}: ${event.status} ${event.delivered}/${event.total}`;
  const { type, jobId: _jobId, ...rest } = event;
  return `${type} ${JSON.stringify(rest)}`;
}

async function cmdCancel(inv: Invocation): Promise<number> {
  const jobId = inv.args[0] as string;
  if (embeddedDatabaseMissing(inv.config)) throw new JobNotFoundError(jobId);
  return withPipeline(inv, async (pipeline) => {
    try {
      const done = await cancelJob(pipeline, jobId);
      const text = done.outcome === 'cancelled' ? `job ${jobId} cancelled` : `cancel requested for ${jobId}; the process running it stops within a second`;
      print(inv.json, done, text);
      return 0;
    } catch (error) {
      if (!(error instanceof JobEndedError)) throw error;
      print(inv.json, { jobId, outcome: 'already_ended', status: error.status }, `job ${jobId} has already ended (${error.status})`);
      return EXIT.short;
    }
  });
}

/** What `stats` says of a database that was never created: nothing was attempted. */
const NO_ATTEMPTS: JobStats = Object.freeze({ attempts: 0, failed: 0, delivered: 0, abandoned: 0, byClass: {}, retries: 0, retriesDelivered: 0, retrySuccessRate: null,
  costUsd: 0, wastedUsd: 0, possiblyBilled: Object.freeze({ count: 0, usd: 0 }), costByClass: {}, costByModel: {}, batch: Object.freeze({ batches: 0, attempts: 0, delivered: 0, costUsd: 0 }) });

async function cmdStats(inv: Invocation): Promise<number> {
  // A read on a fresh data folder answers without creating the embedded database.
  const read = embeddedDatabaseMissing(inv.config) ? async () => NO_ATTEMPTS : (fn: (p: Pipeline) => Promise<JobStats>) => withPipeline(inv, fn);
  return read(async (pipeline) => jobStats(pipeline.database)).then((stats) => {
    const rate = stats.retrySuccessRate === null ? 'n/a' : `${(stats.retrySuccessRate * 100).toFixed(1)}%`;
    const classes = Object.entries(stats.byClass).map(([c, n]) => `  ${c}: ${n}`);
    const costLines = [
      `estimated cost: ${formatUsd(stats.costUsd)} (wasted ${formatUsd(stats.wastedUsd)}; ${stats.possiblyBilled.count} timed out, possibly billed ${formatUsd(stats.possiblyBilled.usd)})`,
      // One line each, so the indented lines stay the failure classes.
      `cost by class: ${Object.entries(stats.costByClass).map(([c, n]) => `${c} ${formatUsd(n)}`).join(', ') || 'none'}`,
      `cost by model: ${Object.entries(stats.costByModel).map(([m, n]) => `${m} ${formatUsd(n)}`).join(', ') || 'none'}`,
      ...(stats.batch.batches > 0
        ? [`batch mode: ${stats.batch.batches} batches, ${stats.batch.attempts} attempts (${stats.batch.delivered} delivered), estimated cost ${formatUsd(stats.batch.costUsd)} at batch prices (half the interactive price)`]
        : []),
    ];
    print(inv.json, stats, [`attempts: ${stats.attempts} (${stats.delivered} delivered, ${stats.failed} failed, ${stats.abandoned} abandoned)`, `retries: ${stats.retries}, delivered ${stats.retriesDelivered}, success rate ${rate}`, 'failures by class:', ...classes, ...costLines].join('\n'));
    return 0;
  });
}

async function cmdCreditsGrant(inv: Invocation): Promise<number> {
  const [userId, amountText] = inv.args as [string, string];
  const parsed = parseCreditAmount(amountText);
  if ('rule' in parsed) throw new UsageError('<amount>', parsed.rule);
  const { amount } = parsed;
  return withPipeline(inv, async (pipeline) => {
    const { balance } = await grantCredits(pipeline.database, userId, amount);
    print(inv.json, { userId, balance }, `granted ${amount} credits to ${userId}; balance ${balance}`);
    return 0;
  });
}

async function cmdCreditsBalance(inv: Invocation): Promise<number> {
  const userId = inv.args[0] as string;
  // A read on a fresh data folder answers without creating the embedded database.
  const { balance, reserved } = embeddedDatabaseMissing(inv.config) ? { balance: 0, reserved: 0 } : await withPipeline(inv, (pipeline) => getBalance(pipeline.database, userId));
  print(inv.json, { userId, balance, reserved }, `${userId}: balance ${balance}, reserved ${reserved}`);
  return 0;
}

async function cmdSubmit(inv: Invocation): Promise<number> {
  const { config } = inv;
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'submit puts jobs on a PostgreSQL job queue for workers; set DATABASE_URL (or use imagegen run)');
  const jobFile = await readJobFile(inv.args[0] as string, { maxQuantity: config.maxQuantity, allowLocalWebhooks: config.webhooks.allowLocal, imageModel: config.gemini.model });
  return withJobsPipeline(inv, async (pipeline) => {
    const { jobId, created } = await submitSpec(pipeline, jobFile.spec, { inputFiles: jobFile.inputFiles, pricePerImage: config.pricePerImage, allowLocalWebhooks: config.webhooks.allowLocal });
    // pg-boss is loaded by the two commands that use the queue only.
    const { submitToQueue } = await import('../streams/worker.js');
    await submitToQueue(pipeline, jobId, { priority: jobFile.spec.priority ?? 0 });
    if (inv.values.open) {
      // A link to the job's page on `imagegen serve` (IMAGEGEN_PUBLIC_URL), signed with the database's secret serve checks.
      const { jobPageLink } = await import('../jobs/page-links.js');
      const link = await jobPageLink(pipeline.database, { baseUrl: config.http.publicUrl, userId: jobFile.spec.userId, jobId, ttlSeconds: config.http.linkTtlSeconds });
      print(inv.json, { jobId, created, pageUrl: link.url, pageUrlExpiresAt: link.expiresAt.toISOString() }, `${created ? 'submitted' : 'already submitted'}: ${jobId}\nlive page (until ${link.expiresAt.toISOString()}): ${link.url}`);
      return 0;
    }
    print(inv.json, { jobId, created }, `${created ? 'submitted' : 'already submitted'}: ${jobId}`);
    return 0;
  });
}

async function cmdWorker(inv: Invocation): Promise<number> {
  const { config } = inv;
  if (!config.databaseUrl) throw new ConfigError('DATABASE_URL', 'the worker shares a PostgreSQL job queue; set DATABASE_URL');
  return withJobsPipeline(inv, async (pipeline) => {
    // prom-client is loaded only when the metrics are served.
    const served = config.metrics.port === undefined ? undefined : await (await import('./worker-metrics.js')).serveWorkerMetrics(pipeline, config.metrics);
    const signals = shutdownSignals(loggedSignalNotice(pipeline.logger));
    // The webhook outbox is sent by every worker (claims keep two from sending the same delivery).
    const webhooks = startWebhookDispatcher({ ...pipeline, metrics: served?.metrics }, config.webhooks);
    try {
      const { runWorker } = await import('../streams/worker.js');
      await runWorker(pipeline, { stop$: signals.stop$, engine: engineOptionsOf(config), jobConcurrency: config.workerJobs, metrics: served?.metrics });
    } finally {
      signals.dispose();
      await webhooks.stop();
      await served?.close();
    }
    return 0;
  });
}

export const HANDLERS: Readonly<Record<string, (inv: Invocation) => Promise<number>>> = {
  run: cmdRun,
  submit: cmdSubmit,
  worker: cmdWorker,
  status: cmdStatus,
  watch: cmdWatch,
  cancel: cmdCancel,
  stats: cmdStats,
  workers: cmdWorkers,
  'credits grant': cmdCreditsGrant,
  'credits balance': cmdCreditsBalance,
  webhooks: cmdWebhooks,
  'webhooks secret': cmdWebhooksSecret,
  // Fastify is loaded by the one command that serves.
  serve: async (inv) => (await import('./serve.js')).cmdServe(inv),
};
