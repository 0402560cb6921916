/**
 * Fuzzes the job-file reader (the CLI's first step: bytes -> UTF-8 -> JSON -> spec ->
 * input files) with fast-check. Whatever the bytes, `readJobFile` either returns a
 * valid spec or throws a `JobSpecError` whose every problem names a field: never
 * another exception (which the CLI would report as exit 1 with a stack trace
 * instead of exit 2). The spec parser alone is fuzzed in test/domain/job-spec.test.ts.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobSpecError } from '../../src/domain/job-spec.js';
import { readJobFile } from '../../src/sources/job-file.js';

let dir: string;
let n = 0;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'imagegen-fuzz-'));
  await writeFile(join(dir, 'in.png'), Buffer.from('not really a png'));
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function outcome(bytes: Uint8Array): Promise<'ok' | 'refused'> {
  const path = join(dir, `job-${n++}.json`);
  await writeFile(path, bytes);
  try {
    await readJobFile(path, { maxQuantity: 50 });
    return 'ok';
  } catch (error) {
    if (!(error instanceof JobSpecError)) throw error;
    expect(error.problems.length).toBeGreaterThan(0);
    for (const p of error.problems) {
      expect(p.field.length).toBeGreaterThan(0);
      expect(error.message).toContain(p.field);
    }
    return 'refused';
  } finally {
    await rm(path, { force: true });
  }
}

/** Values shaped like a job spec, with every field free to be anything. */
const anyValue = fc.oneof(fc.string(), fc.integer(), fc.double(), fc.boolean(), fc.constant(null), fc.array(fc.string(), { maxLength: 3 }), fc.object({ maxDepth: 2 }));
const stage = fc.record(
  {
    quantity: fc.oneof(fc.integer({ min: -5, max: 80 }), anyValue),
    prompt: fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), anyValue),
    'aspect-ratio': fc.oneof(fc.constantFrom('1:1', '16:9', '9:16', '4:3', '21:9', '17:9', ''), anyValue),
    aspectRatio: anyValue,
    mergedImageAttachId: fc.oneof(fc.string(), fc.nat(), anyValue),
    inputAttachId: anyValue,
    inputImage: fc.oneof(fc.constantFrom('in.png', 'missing.png', '', '.', '..', '/'), anyValue),
  },
  { requiredKeys: [] },
);
const jobLike = fc.record(
  { jobId: fc.oneof(fc.string(), anyValue), userId: fc.oneof(fc.string(), fc.nat(), anyValue), productionId: anyValue, stages: fc.oneof(fc.array(stage, { maxLength: 4 }), anyValue) },
  { requiredKeys: [] },
);

describe('readJobFile under fuzzing', () => {
  it('random job-shaped JSON: a spec or a JobSpecError naming fields, never another exception', async () => {
    await fc.assert(fc.asyncProperty(jobLike, async (job) => void (await outcome(Buffer.from(JSON.stringify(job), 'utf8')))), { numRuns: 300 });
  });

  it('random bytes, and job JSON re-encoded or cut at a random point: never another exception', async () => {
    const mangled = fc.tuple(jobLike, fc.constantFrom<BufferEncoding>('utf8', 'utf16le', 'latin1', 'ucs2'), fc.nat(), fc.boolean()).map(([job, encoding, cut, bom]) => {
      const bytes = Buffer.from(JSON.stringify(job), encoding);
      const body = bytes.subarray(0, cut % (bytes.length + 1));
      return new Uint8Array(bom ? Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), body]) : body);
    });
    await fc.assert(fc.asyncProperty(fc.oneof(fc.uint8Array({ maxLength: 300 }), mangled), async (bytes) => void (await outcome(bytes))), { numRuns: 300 });
  });

  it('the property can tell a valid file from an invalid one (control)', async () => {
    const valid = JSON.stringify({ userId: 'u', stages: [{ quantity: 1, prompt: 'p', mergedImageAttachId: 'a1' }] });
    expect(await outcome(Buffer.from(valid))).toBe('ok');
    expect(await outcome(Buffer.from(valid.slice(0, -2)))).toBe('refused');
  });
});
