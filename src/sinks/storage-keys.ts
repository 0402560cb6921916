import { randomUUID } from 'node:crypto';
import { PipelineError } from '../domain/error-class.js';
import { extensionForMimeType } from '../adapters/image-codec.js';

/** Where a generated image is stored: one object per (job, stage, slot, attempt). */
export interface GeneratedImageKeyParts {
  readonly jobId: string;
  readonly stageIndex: number;
  readonly slotIndex: number;
  readonly attempt: number;
}

/**
 * Object key of a generated (WebP) image: `generated/<jobId>/<stage>/<slot>-<attempt>.webp`.
 *
 * The attempt is part of the key so a retry never overwrites the bytes an earlier,
 * possibly committed, attempt wrote; orphans (no committed attach record) are found
 * by listing {@link generatedImagePrefix} and parsed back with {@link parseGeneratedImageKey}.
 *
 * @example
 * generatedImageKey({ jobId: 'j1', stageIndex: 0, slotIndex: 3, attempt: 2 }) // 'generated/j1/0/3-2.webp'
 */
export function generatedImageKey(parts: GeneratedImageKeyParts): string {
  assertSegment('jobId', parts.jobId);
  assertIndex('stageIndex', parts.stageIndex, 0);
  assertIndex('slotIndex', parts.slotIndex, 0);
  assertIndex('attempt', parts.attempt, 1);
  return `${generatedImagePrefix(parts.jobId)}${parts.stageIndex}/${parts.slotIndex}-${parts.attempt}.webp`;
}

/** Prefix of every generated image of a job: `generated/<jobId>/`. */
export function generatedImagePrefix(jobId: string): string {
  assertSegment('jobId', jobId);
  return `generated/${jobId}/`;
}

/** Inverse of {@link generatedImageKey}; `null` for any other key. */
export function parseGeneratedImageKey(key: string): GeneratedImageKeyParts | null {
  const m = /^generated\/([A-Za-z0-9_-][A-Za-z0-9._-]*)\/(\d+)\/(\d+)-(\d+)\.webp$/.exec(key);
  if (!m) return null;
  const [, jobId, stage, slot, attempt] = m;
  if (jobId === undefined || stage === undefined || slot === undefined || attempt === undefined) return null;
  return { jobId, stageIndex: Number(stage), slotIndex: Number(slot), attempt: Number(attempt) };
}

/** Parts of an imported input image's key. */
export interface InputImageKeyParts {
  readonly userId: string;
  /** Mime type of the image (decides the extension). */
  readonly mimeType: string;
  /** Unique id of the object. Default: a random UUID. */
  readonly id?: string;
}

/**
 * Object key of an imported input image: `inputs/<userId>/<id>.<ext>`.
 *
 * @example
 * inputImageKey({ userId: 'u1', mimeType: 'image/jpeg' }) // 'inputs/u1/6f1c...-....jpg'
 */
export function inputImageKey(parts: InputImageKeyParts): string {
  assertSegment('userId', parts.userId);
  const id = parts.id ?? randomUUID();
  assertSegment('id', id);
  return `inputs/${parts.userId}/${id}.${extensionForMimeType(parts.mimeType)}`;
}

function assertSegment(name: string, value: string): void {
  if (typeof value !== 'string' || !/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$/.test(value)) {
    throw new PipelineError('invalid_request', `${name} is not a safe key segment: ${JSON.stringify(String(value).slice(0, 100))}`);
  }
}

function assertIndex(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new PipelineError('invalid_request', `${name} must be an integer >= ${min}, got ${value}`);
  }
}
