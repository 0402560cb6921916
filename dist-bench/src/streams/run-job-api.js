import { Observable, defer, from, mergeMap } from 'rxjs';
import { parseJobSpec } from '../domain/job-spec.js';
import { runStoredJob } from './run-job.js';
import { submitSpec } from './submit-job.js';
/**
 * Submits a job (validate, check attachments and credits, reserve) and runs it in
 * this process, emitting typed events; the last one is `job:finished` with the
 * {@link JobResult}. A spec whose `jobId` already exists resumes that job.
 *
 * @example
 * const events$ = runJob(pipeline, { spec: { userId: 'u1', stages: [{ quantity: 3, prompt: 'a cat', mergedImageAttachId: id }] } });
 * events$.subscribe((e) => e.type === 'job:finished' && console.log(e.result.attachIds));
 */
export function runJob(deps, input, options = {}) {
    return defer(() => {
        const spec = parseJobSpec(input.spec, input.limits);
        return from(submitSpec(deps, spec, { pricePerImage: input.pricePerImage ?? 1 }));
    }).pipe(mergeMap(({ jobId }) => runStoredJob(deps, jobId, options)));
}
