import { firstValueFrom, type Observable } from 'rxjs';
import { expect } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';

/**
 * The {@link PipelineError} a one-value Observable (a generator's call) fails with; fails the
 * test if it emits instead. Its message is checked to hold none of `hidden` (keys, image
 * bytes) and to stay short.
 */
export async function failureOf(source: Observable<unknown>, hidden: readonly string[] = []): Promise<PipelineError> {
  const error = await firstValueFrom(source).then(
    () => {
      throw new Error('expected the call to fail');
    },
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(PipelineError);
  const pe = error as PipelineError;
  for (const text of hidden) expect(pe.message).not.toContain(text);
  expect(pe.message.length).toBeLessThan(1000);
  return pe;
}
