import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { JobSpecError, parseJobSpec, type SpecProblem } from '../../src/domain/job-spec.js';

const problemsOf = (input: unknown, limits = {}): SpecProblem[] => {
  try {
    parseJobSpec(input, limits);
  } catch (error) {
    if (error instanceof JobSpecError) return [...error.problems];
    throw error;
  }
  return [];
};

describe('parseJobSpec', () => {
  it("accepts the source system's stage payload as it is, defaulting the aspect ratio to 16:9", () => {
    const spec = parseJobSpec({
      userId: 42,
      productionId: 7,
      stages: [
        { quantity: 50, prompt: 'a cat', 'aspect-ratio': '1:1', mergedImageAttachId: 1001 },
        { quantity: 50, prompt: 'a dog', mergedImageAttachId: '1002' },
      ],
    });
    expect(spec).toEqual({
      jobId: null,
      userId: '42',
      productionId: '7',
      stages: [
        { index: 0, prompt: 'a cat', aspectRatio: '1:1', quantity: 50, inputAttachId: '1001', inputImage: null, inputAttachField: 'mergedImageAttachId' },
        { index: 1, prompt: 'a dog', aspectRatio: '16:9', quantity: 50, inputAttachId: '1002', inputImage: null, inputAttachField: 'mergedImageAttachId' },
      ],
    });
  });

  it('accepts the camelCase forms and an input image path', () => {
    const spec = parseJobSpec({
      jobId: 'job_1-A',
      userId: 'u',
      stages: [
        { quantity: 1, prompt: 'p', aspectRatio: '21:9', inputAttachId: 'att' },
        { quantity: 2, prompt: 'p', inputImage: './in.png' },
      ],
    });
    expect(spec.jobId).toBe('job_1-A');
    expect(spec.stages[0]).toMatchObject({ aspectRatio: '21:9', inputAttachId: 'att', inputAttachField: 'inputAttachId' });
    expect(spec.stages[1]).toMatchObject({ inputImage: './in.png', inputAttachId: null });
  });

  it('lists every problem at once, each naming the field and the rule', () => {
    const problems = problemsOf({
      jobId: 'bad id!',
      stages: [
        { quantity: 0, prompt: '  ', 'aspect-ratio': '7:3', mergedImageAttachId: 1 },
        { quantity: 2.5, prompt: 3 },
        'nope',
      ],
    });
    expect(problems).toEqual([
      { field: 'jobId', rule: 'must match [A-Za-z0-9_-]{1,64}, got string "bad id!"' },
      { field: 'userId', rule: 'is required' },
      { field: 'stages[0].quantity', rule: 'must be a positive integer, got number 0' },
      { field: 'stages[0].prompt', rule: 'must not be empty' },
      { field: 'stages[0].aspect-ratio', rule: 'must be one of 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, 16:9, 21:9, got string "7:3"' },
      { field: 'stages[1].quantity', rule: 'must be a positive integer, got number 2.5' },
      { field: 'stages[1].prompt', rule: 'must be a string, got number 3' },
      { field: 'stages[1].mergedImageAttachId', rule: 'is required (or inputAttachId, or inputImage with a file path)' },
      { field: 'stages[2]', rule: 'must be an object, got string "nope"' },
    ]);
  });

  it('takes an integer priority in -1000000..1000000 (0 and absent are the default, stored as absent), else names the field and the rule', () => {
    const stages = [{ quantity: 1, prompt: 'p', mergedImageAttachId: 'a1' }];
    expect(parseJobSpec({ userId: 'u', priority: 5, stages }).priority).toBe(5);
    expect(parseJobSpec({ userId: 'u', priority: -1_000_000, stages }).priority).toBe(-1_000_000);
    expect('priority' in parseJobSpec({ userId: 'u', priority: 0, stages })).toBe(false);
    expect('priority' in parseJobSpec({ userId: 'u', stages })).toBe(false);
    for (const bad of [1.5, '3', 1_000_001, true]) {
      const problems = problemsOf({ userId: 'u', priority: bad, stages });
      expect(problems).toHaveLength(1);
      expect(problems[0]?.field).toBe('priority');
      expect(problems[0]?.rule).toMatch(/^must be an integer from -1000000 to 1000000, got /);
    }
  });

  it("takes mode interactive or batch on the job (the stages' default) and on a stage (its own wins); batch is stored, interactive is the absent default", () => {
    const stage = (extra = {}) => ({ quantity: 1, prompt: 'p', mergedImageAttachId: 'a1', ...extra });
    const batchJob = parseJobSpec({ userId: 'u', mode: 'batch', stages: [stage(), stage({ mode: 'interactive' })] });
    expect(batchJob.mode).toBe('batch');
    expect(batchJob.stages.map((s) => s.mode ?? 'interactive')).toEqual(['batch', 'interactive']);
    expect('mode' in batchJob.stages[1]!).toBe(false);
    const plain = parseJobSpec({ userId: 'u', mode: 'interactive', stages: [stage(), stage({ mode: 'batch' })] });
    expect('mode' in plain).toBe(false);
    expect(plain.stages.map((s) => s.mode ?? 'interactive')).toEqual(['interactive', 'batch']);
    expect('mode' in parseJobSpec({ userId: 'u', stages: [stage()] }).stages[0]!).toBe(false);
    expect(problemsOf({ userId: 'u', mode: 'Batch', stages: [stage()] })).toEqual([{ field: 'mode', rule: 'must be one of interactive, batch, got string "Batch"' }]);
    expect(problemsOf({ userId: 'u', stages: [stage(), stage({ mode: 3 })] })).toEqual([{ field: 'stages[1].mode', rule: 'must be one of interactive, batch, got number 3' }]);
  });

  it('enforces the configurable maximum quantity (default 1000)', () => {
    const stage = (quantity: number) => ({ userId: 'u', stages: [{ quantity, prompt: 'p', inputAttachId: 'a' }] });
    expect(problemsOf(stage(1000))).toEqual([]);
    expect(problemsOf(stage(1001))).toEqual([{ field: 'stages[0].quantity', rule: 'must be at most 1000, got 1001' }]);
    expect(problemsOf(stage(20), { maxQuantity: 10 })).toEqual([{ field: 'stages[0].quantity', rule: 'must be at most 10, got 20' }]);
  });

  it('refuses conflicting aliases and two inputs', () => {
    expect(
      problemsOf({ userId: 'u', stages: [{ quantity: 1, prompt: 'p', aspectRatio: '1:1', 'aspect-ratio': '16:9', inputAttachId: 'a', inputImage: 'x.png' }] }).map(
        (p) => p.field,
      ),
    ).toEqual(['stages[0].aspectRatio', 'stages[0].inputImage']);
  });

  it('refuses a non-object root, an empty stage list and a non-array stages', () => {
    expect(problemsOf([])).toEqual([{ field: '(root)', rule: 'must be a JSON object, got an array' }]);
    expect(problemsOf({ userId: 'u', stages: [] })).toEqual([{ field: 'stages', rule: 'must have at least 1 stage' }]);
    expect(problemsOf({ userId: 'u', stages: {} })).toEqual([{ field: 'stages', rule: 'must be an array, got an object' }]);
  });

  it('refuses a lone UTF-16 surrogate in every string field, naming the field and where the surrogate is', () => {
    const stage = { quantity: 1, prompt: 'p', aspectRatio: '1:1', inputAttachId: 'att' };
    const cases: readonly [input: Record<string, unknown>, field: string][] = [
      [{ userId: 'u\ud800', stages: [stage] }, 'userId'],
      [{ userId: 'u', productionId: '\udc00p', stages: [stage] }, 'productionId'],
      [{ jobId: 'j\ud800', userId: 'u', stages: [stage] }, 'jobId'],
      [{ userId: 'u', stages: [{ ...stage, prompt: 'a fox \ud83d' }] }, 'stages[0].prompt'],
      [{ userId: 'u', stages: [{ ...stage, prompt: 'a fox \ude00\ud83d' }] }, 'stages[0].prompt'],
      [{ userId: 'u', stages: [{ ...stage, aspectRatio: '1:1\udfff' }] }, 'stages[0].aspectRatio'],
      [{ userId: 'u', stages: [{ ...stage, aspectRatio: undefined, 'aspect-ratio': '\ud800' }] }, 'stages[0].aspect-ratio'],
      [{ userId: 'u', stages: [{ ...stage, inputAttachId: undefined, mergedImageAttachId: 'a\ud800' }] }, 'stages[0].mergedImageAttachId'],
      [{ userId: 'u', stages: [{ ...stage, inputAttachId: 'a\udbff' }] }, 'stages[0].inputAttachId'],
      [{ userId: 'u', stages: [{ ...stage, inputAttachId: undefined, inputImage: 'in\ud800.png' }] }, 'stages[0].inputImage'],
    ];
    for (const [input, field] of cases) {
      const problems = problemsOf(input);
      expect(problems, field).toHaveLength(1);
      expect(problems[0]?.field).toBe(field);
      expect(problems[0]?.rule).toMatch(/^must be well-formed Unicode text, found a lone UTF-16 surrogate \\u[0-9a-f]{4} at character \d+$/);
    }
    expect(problemsOf({ userId: 'u\ud800', stages: [stage] })[0]?.rule).toBe('must be well-formed Unicode text, found a lone UTF-16 surrogate \\ud800 at character 1');
    // Whole pairs (emoji, CJK extension B) are fine.
    expect(parseJobSpec({ userId: 'u\u{1f98a}', productionId: '\u{20000}', stages: [{ ...stage, prompt: 'a fox \u{1f98a}' }] }).stages[0]?.prompt).toBe('a fox \u{1f98a}');
  });

  it('never throws anything but JobSpecError on arbitrary JSON (fuzz)', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (value) => {
        try {
          parseJobSpec(value);
        } catch (error) {
          expect(error).toBeInstanceOf(JobSpecError);
          expect((error as JobSpecError).problems.length).toBeGreaterThan(0);
        }
      }),
      { numRuns: 2000 },
    );
    fc.assert(
      fc.property(
        fc.record({
          userId: fc.oneof(fc.string(), fc.integer(), fc.constant(null)),
          stages: fc.array(
            fc.record({
              quantity: fc.oneof(fc.integer({ min: -5, max: 2000 }), fc.double(), fc.string()),
              prompt: fc.oneof(fc.string(), fc.constant(null)),
              'aspect-ratio': fc.oneof(fc.constantFrom('1:1', '16:9', '5:5'), fc.string()),
              mergedImageAttachId: fc.oneof(fc.string(), fc.integer()),
            }),
            { maxLength: 4 },
          ),
        }),
        (value) => {
          try {
            const spec = parseJobSpec(value);
            expect(spec.stages.length).toBeGreaterThan(0);
            for (const s of spec.stages) expect(Number.isInteger(s.quantity) && s.quantity >= 1 && s.quantity <= 1000).toBe(true);
          } catch (error) {
            expect(error).toBeInstanceOf(JobSpecError);
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});
