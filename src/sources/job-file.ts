import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { JobSpecError, parseJobSpec, type JobSpec, type JobSpecLimits, type SpecProblem } from '../domain/job-spec.js';
import { inspectInputImage, MAX_INPUT_IMAGE_BYTES } from './input-image.js';

/** Largest job file we read. */
export const MAX_JOB_FILE_BYTES = 1024 * 1024;

/** A stage's input image read from disk and checked to be an image. */
export interface InputFile {
  readonly stageIndex: number;
  readonly path: string;
  readonly bytes: Uint8Array;
  readonly mimeType: string;
  readonly width: number;
  readonly height: number;
}

export interface JobFile {
  readonly spec: JobSpec;
  readonly inputFiles: readonly InputFile[];
}

/**
 * Reads and validates a job file: UTF-8 JSON (a BOM is allowed), a valid spec, and
 * for every stage with `inputImage` a readable image file (relative to the job
 * file) under the input size and pixel limits that decodes completely (a truncated
 * file is refused here). Reads only: nothing is written.
 *
 * @throws {JobSpecError} listing every problem (field + rule).
 */
export async function readJobFile(path: string, limits: JobSpecLimits = {}): Promise<JobFile> {
  const fail = (field: string, rule: string): never => {
    throw new JobSpecError([{ field, rule }]);
  };
  let raw: Buffer;
  try {
    const info = await stat(path);
    if (!info.isFile()) fail('(file)', `${path} is not a file`);
    if (info.size > MAX_JOB_FILE_BYTES) fail('(file)', `${path} is larger than ${MAX_JOB_FILE_BYTES} bytes`);
    raw = await readFile(path);
  } catch (error) {
    if (error instanceof JobSpecError) throw error;
    return fail('(file)', `cannot read ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`);
  }
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: false }).decode(raw);
  } catch {
    return fail('(file)', 'must be UTF-8 encoded JSON (found bytes that are not UTF-8)');
  }
  if (text.includes('\u0000')) fail('(file)', 'must be UTF-8 encoded JSON (found NUL bytes; UTF-16?)');
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return fail('(file)', `is not valid JSON: ${(error as Error).message}`);
  }
  const spec = parseJobSpec(json, limits);

  const base = dirname(resolve(path));
  const problems: SpecProblem[] = [];
  const inputFiles: InputFile[] = [];
  for (const stage of spec.stages) {
    if (stage.inputImage === null) continue;
    const field = `stages[${stage.index}].inputImage`;
    const file = resolve(base, stage.inputImage);
    try {
      const info = await stat(file);
      if (!info.isFile()) {
        problems.push({ field, rule: `${stage.inputImage} is not a file` });
        continue;
      }
      if (info.size > MAX_INPUT_IMAGE_BYTES) {
        problems.push({ field, rule: `${stage.inputImage} is ${info.size} bytes, more than the ${MAX_INPUT_IMAGE_BYTES}-byte limit` });
        continue;
      }
      const bytes = new Uint8Array(await readFile(file));
      const checked = await inspectInputImage(bytes, stage.inputImage);
      if ('rule' in checked) {
        problems.push({ field, rule: checked.rule });
        continue;
      }
      const probe = checked.image;
      inputFiles.push({ stageIndex: stage.index, path: file, bytes, ...probe });
    } catch (error) {
      problems.push({ field, rule: `${stage.inputImage}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : String(error)}` });
    }
  }
  if (problems.length > 0) throw new JobSpecError(problems);
  return { spec, inputFiles };
}
