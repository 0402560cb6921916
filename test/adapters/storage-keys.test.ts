import { describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import { validateObjectKey } from '../../src/sinks/object-store.js';
import { generatedImageKey, generatedImagePrefix, inputImageKey, parseGeneratedImageKey } from '../../src/sinks/storage-keys.js';

describe('storage keys', () => {
  it('generatedImageKey is generated/<job>/<stage>/<slot>-<attempt>.webp and parses back', () => {
    const parts = { jobId: 'job_7f3a', stageIndex: 2, slotIndex: 41, attempt: 3 };
    const key = generatedImageKey(parts);
    expect(key).toBe('generated/job_7f3a/2/41-3.webp');
    expect(key.startsWith(generatedImagePrefix('job_7f3a'))).toBe(true);
    expect(parseGeneratedImageKey(key)).toEqual(parts);
    expect(() => validateObjectKey(key)).not.toThrow();
  });

  it('different attempts of one slot get different keys', () => {
    const base = { jobId: 'j', stageIndex: 0, slotIndex: 0 };
    expect(generatedImageKey({ ...base, attempt: 1 })).not.toBe(generatedImageKey({ ...base, attempt: 2 }));
  });

  it.each([
    { jobId: '../x', stageIndex: 0, slotIndex: 0, attempt: 1 },
    { jobId: 'a/b', stageIndex: 0, slotIndex: 0, attempt: 1 },
    { jobId: '', stageIndex: 0, slotIndex: 0, attempt: 1 },
    { jobId: 'j', stageIndex: -1, slotIndex: 0, attempt: 1 },
    { jobId: 'j', stageIndex: 0, slotIndex: 1.5, attempt: 1 },
    { jobId: 'j', stageIndex: 0, slotIndex: 0, attempt: 0 },
  ])('rejects unsafe parts %j with invalid_request', (parts) => {
    expect(() => generatedImageKey(parts)).toThrow(PipelineError);
    try {
      generatedImageKey(parts);
    } catch (error) {
      expect((error as PipelineError).errorClass).toBe('invalid_request');
    }
  });

  it('parseGeneratedImageKey returns null for other keys', () => {
    expect(parseGeneratedImageKey('inputs/u/x.png')).toBeNull();
    expect(parseGeneratedImageKey('generated/j/0/0-1.png')).toBeNull();
  });

  it('inputImageKey is inputs/<user>/<id>.<ext>, unique by default', () => {
    expect(inputImageKey({ userId: 'u1', id: 'abc', mimeType: 'image/jpeg' })).toBe('inputs/u1/abc.jpg');
    const a = inputImageKey({ userId: 'u1', mimeType: 'image/png' });
    const b = inputImageKey({ userId: 'u1', mimeType: 'image/png' });
    expect(a).toMatch(/^inputs\/u1\/[0-9a-f-]{36}\.png$/);
    expect(a).not.toBe(b);
    expect(() => inputImageKey({ userId: '../admin', mimeType: 'image/png' })).toThrow(PipelineError);
  });
});
