import { JobSpecError, parseJobSpec, type JobSpecLimits, type SpecProblem } from '../domain/job-spec.js';
import type { InputFile, JobFile } from './job-file.js';
import { inspectInputImage } from './input-image.js';

/** Who submits: the user a token acts as (null: an admin token that names none) and whether it is an admin's. */
export interface Submitter {
  readonly userId: string | null;
  readonly admin: boolean;
}

/** What a stage whose image came as `inputImageData` records as its `inputImage` (there is no file path over HTTP). */
export const INLINE_INPUT_IMAGE = '(inputImageData)';

/** Strict base64 (RFC 4648 section 4, padding optional): `Buffer.from` alone skips any character it does not know. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads a job submitted over HTTP (`POST /v1/jobs`), the way `readJobFile` reads a
 * job file, with the same problems list:
 *
 * - the job file's spec without `userId`: the token says who. An admin token may name
 *   `userId` (it must, when it acts for no user of its own); a user token may repeat its
 *   own user, never another;
 * - a stage's input image is an attachment (`mergedImageAttachId`, `inputAttachId`, e.g.
 *   from `POST /v1/attachments`) or the image itself as base64 `inputImageData`; never a
 *   file path (`inputImage`), which would read the server's disk;
 * - every `inputImageData` is checked like an input file (size, format, pixels, decodes
 *   to the end). Reads only: nothing is written.
 *
 * @throws {JobSpecError} listing every problem (field + rule): first the spec's, then the images'.
 */
export async function readJobRequest(body: unknown, submitter: Submitter, limits: JobSpecLimits = {}): Promise<JobFile> {
  if (!isPlainObject(body)) return { spec: parseJobSpec(body, limits), inputFiles: [] };
  const problems: SpecProblem[] = [];
  const inline = new Map<number, string>();

  let userId: unknown = submitter.userId;
  const named = body['userId'];
  if (named !== undefined && named !== null) {
    if (submitter.admin) userId = named;
    else if (String(named) !== submitter.userId) problems.push({ field: 'userId', rule: 'only an admin token may name another user; leave userId out (the token says who)' });
  } else if (submitter.userId === null) {
    problems.push({ field: 'userId', rule: 'is required with an admin token that acts for no user of its own' });
  }

  const rawStages = body['stages'];
  const stages = Array.isArray(rawStages)
    ? rawStages.map((raw: unknown, i) => {
        if (!isPlainObject(raw)) return raw;
        const at = `stages[${i}]`;
        const { inputImageData, ...stage } = raw;
        if (stage['inputImage'] !== undefined && stage['inputImage'] !== null) {
          problems.push({
            field: `${at}.inputImage`,
            rule: 'file paths are not accepted over HTTP: send the image as base64 inputImageData, or upload it (POST /v1/attachments) and give its mergedImageAttachId',
          });
          // Standing in for the refused path, so the spec is not also told it has no input.
          return { ...stage, inputImage: INLINE_INPUT_IMAGE };
        }
        if (inputImageData === undefined || inputImageData === null) return stage;
        const attach = stage['mergedImageAttachId'] ?? stage['inputAttachId'];
        if (attach !== undefined && attach !== null) {
          problems.push({ field: `${at}.inputImageData`, rule: `conflicts with ${at}.${stage['mergedImageAttachId'] !== undefined ? 'mergedImageAttachId' : 'inputAttachId'}; give only one input` });
          return stage;
        }
        if (typeof inputImageData !== 'string' || inputImageData.length === 0 || !BASE64.test(inputImageData)) {
          problems.push({ field: `${at}.inputImageData`, rule: 'must be a non-empty base64 string (A-Z a-z 0-9 + /, = padding; no data: prefix, no line breaks)' });
        } else {
          inline.set(i, inputImageData);
        }
        return { ...stage, inputImage: INLINE_INPUT_IMAGE };
      })
    : rawStages;

  let spec;
  try {
    spec = parseJobSpec({ ...body, userId, stages }, limits);
  } catch (error) {
    if (!(error instanceof JobSpecError)) throw error;
    throw new JobSpecError([...problems, ...error.problems]);
  }
  if (problems.length > 0) throw new JobSpecError(problems);

  const inputFiles: InputFile[] = [];
  for (const [stageIndex, data] of inline) {
    const field = `stages[${stageIndex}].inputImageData`;
    const bytes = new Uint8Array(Buffer.from(data, 'base64'));
    const checked = await inspectInputImage(bytes, 'the image');
    if ('rule' in checked) problems.push({ field, rule: checked.rule });
    else inputFiles.push({ stageIndex, path: field, bytes, ...checked.image });
  }
  if (problems.length > 0) throw new JobSpecError(problems);
  return { spec, inputFiles };
}
