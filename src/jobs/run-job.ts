import { Observable, defer, from, mergeMap } from 'rxjs';
import type { PipelineConfig } from '../config.js';
import type { PipelineEvent } from '../domain/events.js';
import { parseJobSpec, type JobSpecLimits } from '../domain/job-spec.js';
import { runStoredJob, type RunJobDeps, type RunJobOptions } from '../streams/run-job.js';
import { DEFAULT_PRICE_PER_IMAGE, submitSpec } from './submit-job.js';

export interface RunJobInput {
  /** A job spec in the source system's shape or camelCase; validated here. */
  readonly spec: unknown;
  /** Credits per delivered image. Default: the pipeline's `config.pricePerImage` (`IMAGEGEN_PRICE_PER_IMAGE`), else 1. */
  readonly pricePerImage?: number;
  readonly limits?: JobSpecLimits;
}

/**
 * Submits a job (validate, check attachments and credits, reserve) and runs it in
 * this process, emitting typed events; the last one is `job:finished` with the
 * {@link JobResult}. A spec whose `jobId` already exists resumes that job.
 *
 * @example
 * const events$ = runJob(pipeline, { spec: { userId: 'u1', stages: [{ quantity: 3, prompt: 'a cat', mergedImageAttachId: id }] } });
 * events$.subscribe((e) => e.type === 'job:finished' && console.log(e.result.attachIds));
 */
export function runJob(
  deps: RunJobDeps & {
    readonly config?: Pick<PipelineConfig, 'pricePerImage' | 'maxQuantity'> & {
      readonly webhooks?: Pick<PipelineConfig['webhooks'], 'allowLocal'>;
      readonly gemini?: Pick<PipelineConfig['gemini'], 'model'>;
    };
  },
  input: RunJobInput,
  options: RunJobOptions = {},
): Observable<PipelineEvent> {
  return defer(() => {
    // A pipeline (`openPipeline`) brings its configuration: the price and quantity limit the CLI uses.
    const allowLocalWebhooks = deps.config?.webhooks?.allowLocal === true;
    const spec = parseJobSpec(input.spec, input.limits ?? (deps.config ? { maxQuantity: deps.config.maxQuantity, allowLocalWebhooks, imageModel: deps.config.gemini?.model } : undefined));
    return from(submitSpec(deps, spec, { pricePerImage: input.pricePerImage ?? deps.config?.pricePerImage ?? DEFAULT_PRICE_PER_IMAGE, allowLocalWebhooks }));
  }).pipe(mergeMap(({ jobId }) => runStoredJob(deps, jobId, options)));
}
