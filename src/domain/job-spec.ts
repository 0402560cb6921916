import { ASPECT_RATIOS, DEFAULT_ASPECT_RATIO, type AspectRatio } from './aspect-ratio.js';
import { DEFAULT_GEMINI_IMAGE_MODEL, imageModelCapabilities, IMAGE_SIZES, type ImageSize } from './models.js';
import { parseWebhookSpec, type WebhookSpec } from './webhook.js';

/** One stage of a validated job: what to generate and how many. */
export interface StageSpec {
  /** Position in the job, 0-based; the merged result follows this order. */
  readonly index: number;
  readonly prompt: string;
  readonly aspectRatio: AspectRatio;
  /** How many images this stage owes: its slots are `0 .. quantity-1`. */
  readonly quantity: number;
  /** Attachment id of the stage's input image (the source calls it `mergedImageAttachId`). */
  readonly inputAttachId: string | null;
  /** A file path (CLI only, relative to the job file) to import as the input attachment. */
  readonly inputImage: string | null;
  /** The key the input attachment was given under, so errors name the field the user wrote. */
  readonly inputAttachField?: 'mergedImageAttachId' | 'inputAttachId';
  /**
   * `imageConfig.imageSize` (`512`, `1K`, `2K`, `4K`), when the model takes one (see
   * `src/domain/models.ts`). Absent: the model's default; stored only when given.
   */
  readonly imageSize?: ImageSize;
  /**
   * `batch`: the stage's slots go to the provider's batch API in rounds, at the batch price
   * (`fillBatchRounds`). Resolved at parse time: the stage's own `mode`, else the job's.
   * Present only for batch stages (an interactive stage has no key).
   */
  readonly mode?: 'batch';
}

/**
 * How a stage's attempts reach the provider: `interactive` (one call each, the default) or
 * `batch` (the provider's batch API: half the price, minutes to hours).
 */
export type JobMode = 'interactive' | 'batch';
export const JOB_MODES: readonly JobMode[] = Object.freeze(['interactive', 'batch']);

/** A stage's mode (see {@link StageSpec.mode}). */
export function stageMode(stage: Pick<StageSpec, 'mode'>): JobMode {
  return stage.mode ?? 'interactive';
}

/** Reads a `mode` field: absent is `undefined` (inherit / default). */
function readMode(value: unknown, field: string, problems: SpecProblem[]): JobMode | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string' && (JOB_MODES as readonly string[]).includes(value)) return value as JobMode;
  problems.push({ field, rule: `must be one of ${JOB_MODES.join(', ')}, got ${describe(value)}` });
  return undefined;
}

/** A validated job. `jobId` is the idempotency key: submitting it twice makes one job. */
export interface JobSpec {
  readonly jobId: string | null;
  readonly userId: string;
  readonly productionId: string | null;
  /**
   * Scheduling priority: higher runs first (the fleet's queue and the attempt permits of a
   * worker, see `FairQueue`). Absent = 0, the default; stored only when given.
   */
  readonly priority?: number;
  /**
   * The job's spend cap, USD (a positive number): no attempt starts whose estimate (the
   * price table's, `src/domain/price-table.ts`) would take the job's estimated cost past it;
   * the short stages end `cost_cap` and the job `partial`. Absent: no cap; stored only when given.
   */
  readonly maxCostUsd?: number;
  /** The job's default stage mode (a stage's own `mode` wins). Absent = `interactive`; stored only when `batch`. */
  readonly mode?: 'batch';
  readonly stages: readonly StageSpec[];
  /**
   * Where signed callbacks of this job go, and which events (`src/domain/webhook.ts`).
   * Absent: no webhooks; stored only when given, with its `events` filled in.
   */
  readonly webhook?: WebhookSpec;
}

/** The range of a job's `priority` (PostgreSQL `integer`). */
export const PRIORITY_RANGE = Object.freeze({ min: -1_000_000, max: 1_000_000 });

export interface JobSpecLimits {
  /** Largest `quantity` a stage may ask for. Default 1000. */
  readonly maxQuantity?: number;
  /** Largest number of stages in a job. Default 100. */
  readonly maxStages?: number;
  /** Longest prompt, in characters. Default 10,000. */
  readonly maxPromptLength?: number;
  /** `webhook.url` may point to this machine or a private network (`IMAGEGEN_WEBHOOK_ALLOW_LOCAL`, for tests). Default false. */
  readonly allowLocalWebhooks?: boolean;
  /**
   * The image model the jobs will run on (`GEMINI_MODEL`): a stage's `aspectRatio` and
   * `imageSize` must be ones it accepts (`imageModelCapabilities`). Default {@link DEFAULT_GEMINI_IMAGE_MODEL}.
   */
  readonly imageModel?: string;
}

export const DEFAULT_JOB_SPEC_LIMITS: Readonly<Required<JobSpecLimits>> = Object.freeze({
  maxQuantity: 1000,
  maxStages: 100,
  maxPromptLength: 10_000,
  allowLocalWebhooks: false,
  imageModel: DEFAULT_GEMINI_IMAGE_MODEL,
});

/** One thing wrong with a job spec: which field, which rule. */
export interface SpecProblem {
  /** JSON-path-like location, e.g. `stages[1].quantity`. */
  readonly field: string;
  /** The rule the value broke, in words. */
  readonly rule: string;
}

/** Thrown by {@link parseJobSpec}; lists every problem at once. */
export class JobSpecError extends Error {
  override readonly name = 'JobSpecError';
  readonly problems: readonly SpecProblem[];
  constructor(problems: readonly SpecProblem[]) {
    super(
      `invalid job spec (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n` +
        problems.map((p) => `  - ${p.field}: ${p.rule}`).join('\n'),
    );
    this.problems = problems;
  }
}

const JOB_ID = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_ID_LENGTH = 128;
/**
 * A UTF-16 surrogate without its partner: a high one not followed by a low one, or a
 * low one not preceded by a high one. JSON allows it (`"\ud800"`), but it has no UTF-8
 * form, so PostgreSQL, storage keys and the provider all fail on it later, after rows
 * and objects were written. (`String.prototype.isWellFormed` is ES2024; our lib is ES2023.)
 */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

function hasLoneSurrogate(value: string): boolean {
  return LONE_SURROGATE.test(value);
}

/** The rule a string with a lone surrogate breaks, naming where the surrogate is. */
function loneSurrogateRule(value: string): string {
  const at = value.search(LONE_SURROGATE);
  const unit = value.charCodeAt(at).toString(16).padStart(4, '0');
  return `must be well-formed Unicode text, found a lone UTF-16 surrogate \\u${unit} at character ${at}`;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'number' && !Number.isFinite(value)) return String(value);
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value)?.slice(0, 40)}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads an id that may be a string or a non-negative integer (the source system
 * uses numeric ids) and returns it as a string.
 */
function readId(value: unknown, field: string, problems: SpecProblem[]): string | null {
  if (typeof value === 'string') {
    if (hasLoneSurrogate(value)) problems.push({ field, rule: loneSurrogateRule(value) });
    else if (value.trim().length === 0) problems.push({ field, rule: 'must be a non-empty string' });
    else if (value.length > MAX_ID_LENGTH) problems.push({ field, rule: `must be at most ${MAX_ID_LENGTH} characters` });
    else if (/[\u0000-\u001f\u007f]/.test(value)) problems.push({ field, rule: 'must not contain control characters' });
    else return value;
    return null;
  }
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return String(value);
  problems.push({ field, rule: `must be a string or a non-negative integer, got ${describe(value)}` });
  return null;
}

/** Picks one of two alias keys; both present with different values is a conflict. */
function alias(raw: Record<string, unknown>, a: string, b: string, at: string, problems: SpecProblem[]): unknown {
  const hasA = raw[a] !== undefined;
  const hasB = raw[b] !== undefined;
  if (hasA && hasB && raw[a] !== raw[b]) {
    problems.push({ field: `${at}${b}`, rule: `conflicts with ${at}${a}; give only one of them` });
  }
  return hasA ? raw[a] : raw[b];
}

function parseStage(raw: unknown, index: number, limits: Required<JobSpecLimits>, jobMode: JobMode | undefined, problems: SpecProblem[]): StageSpec | null {
  const at = `stages[${index}]`;
  if (!isPlainObject(raw)) {
    problems.push({ field: at, rule: `must be an object, got ${describe(raw)}` });
    return null;
  }
  const before = problems.length;
  const model = imageModelCapabilities(limits.imageModel);

  const quantity = raw['quantity'];
  if (quantity === undefined) problems.push({ field: `${at}.quantity`, rule: 'is required' });
  else if (typeof quantity !== 'number' || !Number.isInteger(quantity) || quantity < 1) {
    problems.push({ field: `${at}.quantity`, rule: `must be a positive integer, got ${describe(quantity)}` });
  } else if (quantity > limits.maxQuantity) {
    problems.push({ field: `${at}.quantity`, rule: `must be at most ${limits.maxQuantity}, got ${quantity}` });
  }

  const prompt = raw['prompt'];
  if (prompt === undefined) problems.push({ field: `${at}.prompt`, rule: 'is required' });
  else if (typeof prompt !== 'string') problems.push({ field: `${at}.prompt`, rule: `must be a string, got ${describe(prompt)}` });
  else if (hasLoneSurrogate(prompt)) problems.push({ field: `${at}.prompt`, rule: loneSurrogateRule(prompt) });
  else if (prompt.trim().length === 0) problems.push({ field: `${at}.prompt`, rule: 'must not be empty' });
  else if (prompt.length > limits.maxPromptLength) {
    problems.push({ field: `${at}.prompt`, rule: `must be at most ${limits.maxPromptLength} characters, got ${prompt.length}` });
  } else if (prompt.includes('\u0000') || prompt.includes('\uFFFD')) {
    problems.push({ field: `${at}.prompt`, rule: 'must be valid UTF-8 text (found a NUL or U+FFFD replacement character)' });
  }

  const ratio = alias(raw, 'aspect-ratio', 'aspectRatio', `${at}.`, problems);
  let aspectRatio: AspectRatio = DEFAULT_ASPECT_RATIO;
  if (ratio !== undefined && ratio !== null) {
    const key = raw['aspect-ratio'] !== undefined ? 'aspect-ratio' : 'aspectRatio';
    if (typeof ratio === 'string' && hasLoneSurrogate(ratio)) problems.push({ field: `${at}.${key}`, rule: loneSurrogateRule(ratio) });
    else if (typeof ratio === 'string' && (model.aspectRatios as readonly string[]).includes(ratio)) aspectRatio = ratio as AspectRatio;
    else if (typeof ratio === 'string' && (ASPECT_RATIOS as readonly string[]).includes(ratio)) {
      problems.push({ field: `${at}.${key}`, rule: `${ratio} is not taken by the model ${limits.imageModel}; it takes ${model.aspectRatios.join(', ')}` });
    } else {
      problems.push({ field: `${at}.${key}`, rule: `must be one of ${model.aspectRatios.join(', ')}, got ${describe(ratio)}` });
    }
  }

  let imageSize: ImageSize | undefined;
  const size = raw['imageSize'];
  if (size !== undefined && size !== null) {
    if (typeof size === 'string' && (model.imageSizes as readonly string[]).includes(size)) imageSize = size as ImageSize;
    else if (model.imageSizes.length === 0) {
      problems.push({ field: `${at}.imageSize`, rule: `the model ${limits.imageModel} takes no imageSize (${IMAGE_SIZES.join(', ')} are for gemini-3-pro-image and gemini-3.1-flash-image); leave it out` });
    } else {
      problems.push({ field: `${at}.imageSize`, rule: `must be one of ${model.imageSizes.join(', ')} (model ${limits.imageModel}), got ${describe(size)}` });
    }
  }

  const attach = alias(raw, 'mergedImageAttachId', 'inputAttachId', `${at}.`, problems);
  const attachKey: 'mergedImageAttachId' | 'inputAttachId' = raw['mergedImageAttachId'] === undefined && raw['inputAttachId'] !== undefined ? 'inputAttachId' : 'mergedImageAttachId';
  const image = raw['inputImage'];
  let inputAttachId: string | null = null;
  let inputImage: string | null = null;
  if (attach !== undefined && attach !== null) inputAttachId = readId(attach, `${at}.${attachKey}`, problems);
  if (image !== undefined && image !== null) {
    if (typeof image !== 'string' || image.trim().length === 0) {
      problems.push({ field: `${at}.inputImage`, rule: `must be a non-empty file path, got ${describe(image)}` });
    } else if (hasLoneSurrogate(image)) {
      problems.push({ field: `${at}.inputImage`, rule: loneSurrogateRule(image) });
    } else if (image.includes('\u0000')) {
      problems.push({ field: `${at}.inputImage`, rule: 'must not contain NUL characters' });
    } else inputImage = image;
  }
  if ((attach === undefined || attach === null) && (image === undefined || image === null)) {
    problems.push({ field: `${at}.mergedImageAttachId`, rule: 'is required (or inputAttachId, or inputImage with a file path)' });
  } else if (attach !== undefined && attach !== null && image !== undefined && image !== null) {
    problems.push({ field: `${at}.inputImage`, rule: `conflicts with ${at}.${attachKey}; give only one input` });
  }

  const mode = readMode(raw['mode'], `${at}.mode`, problems) ?? jobMode ?? 'interactive';

  if (problems.length > before) return null;
  return Object.freeze({
    index,
    prompt: prompt as string,
    aspectRatio,
    quantity: quantity as number,
    inputAttachId,
    inputImage,
    inputAttachField: attachKey,
    ...(imageSize !== undefined ? { imageSize } : {}),
    ...(mode === 'batch' ? { mode } : {}),
  });
}

/**
 * Validates a job spec, accepting the source system's stage payload as it is
 * (`quantity`, `prompt`, `aspect-ratio`, `mergedImageAttachId`) and the camelCase
 * forms (`aspectRatio`, `inputAttachId`). Unknown keys are ignored, except inside
 * `webhook` (`parseWebhookSpec`), a new object where a misspelt key would silently
 * change the subscription.
 *
 * @throws {JobSpecError} listing every problem (field + rule) at once.
 */
export function parseJobSpec(input: unknown, limitsIn: JobSpecLimits = {}): JobSpec {
  const limits = { ...DEFAULT_JOB_SPEC_LIMITS, ...limitsIn };
  // An explicit `imageModel: undefined` (an unset GEMINI_MODEL) means the default model.
  limits.imageModel ??= DEFAULT_JOB_SPEC_LIMITS.imageModel;
  const problems: SpecProblem[] = [];
  if (!isPlainObject(input)) throw new JobSpecError([{ field: '(root)', rule: `must be a JSON object, got ${describe(input)}` }]);

  let jobId: string | null = null;
  const rawJobId = input['jobId'];
  if (rawJobId !== undefined && rawJobId !== null) {
    if (typeof rawJobId === 'string' && hasLoneSurrogate(rawJobId)) problems.push({ field: 'jobId', rule: loneSurrogateRule(rawJobId) });
    else if (typeof rawJobId === 'string' && JOB_ID.test(rawJobId)) jobId = rawJobId;
    else problems.push({ field: 'jobId', rule: `must match [A-Za-z0-9_-]{1,64}, got ${describe(rawJobId)}` });
  }

  let userId: string | null = null;
  if (input['userId'] === undefined || input['userId'] === null) problems.push({ field: 'userId', rule: 'is required' });
  else userId = readId(input['userId'], 'userId', problems);

  let productionId: string | null = null;
  if (input['productionId'] !== undefined && input['productionId'] !== null) {
    productionId = readId(input['productionId'], 'productionId', problems);
  }

  let priority: number | undefined;
  const rawPriority = input['priority'];
  if (rawPriority !== undefined && rawPriority !== null) {
    if (typeof rawPriority === 'number' && Number.isInteger(rawPriority) && rawPriority >= PRIORITY_RANGE.min && rawPriority <= PRIORITY_RANGE.max) {
      if (rawPriority !== 0) priority = rawPriority;
    } else {
      problems.push({ field: 'priority', rule: `must be an integer from ${PRIORITY_RANGE.min} to ${PRIORITY_RANGE.max}, got ${describe(rawPriority)}` });
    }
  }

  let maxCostUsd: number | undefined;
  const rawMaxCost = input['maxCostUsd'];
  if (rawMaxCost !== undefined && rawMaxCost !== null) {
    if (typeof rawMaxCost === 'number' && Number.isFinite(rawMaxCost) && rawMaxCost > 0) maxCostUsd = rawMaxCost;
    else problems.push({ field: 'maxCostUsd', rule: `must be a positive number of US dollars, got ${describe(rawMaxCost)}` });
  }

  const mode = readMode(input['mode'], 'mode', problems);

  let webhook: WebhookSpec | null = null;
  if (input['webhook'] !== undefined && input['webhook'] !== null) {
    webhook = parseWebhookSpec(input['webhook'], { allowLocal: limits.allowLocalWebhooks }, problems);
  }

  const rawStages = input['stages'];
  const stages: StageSpec[] = [];
  if (rawStages === undefined) problems.push({ field: 'stages', rule: 'is required' });
  else if (!Array.isArray(rawStages)) problems.push({ field: 'stages', rule: `must be an array, got ${describe(rawStages)}` });
  else if (rawStages.length === 0) problems.push({ field: 'stages', rule: 'must have at least 1 stage' });
  else if (rawStages.length > limits.maxStages) {
    problems.push({ field: 'stages', rule: `must have at most ${limits.maxStages} stages, got ${rawStages.length}` });
  } else {
    rawStages.forEach((raw, i) => {
      const stage = parseStage(raw, i, limits, mode, problems);
      if (stage) stages.push(stage);
    });
  }

  if (problems.length > 0) throw new JobSpecError(problems);
  return Object.freeze({
    jobId,
    userId: userId as string,
    productionId,
    ...(priority !== undefined ? { priority } : {}),
    ...(maxCostUsd !== undefined ? { maxCostUsd } : {}),
    ...(mode === 'batch' ? { mode } : {}),
    stages: Object.freeze(stages),
    ...(webhook !== null ? { webhook } : {}),
  });
}

/** Total images a job asks for. */
export function totalImages(spec: Pick<JobSpec, 'stages'>): number {
  return spec.stages.reduce((sum, s) => sum + s.quantity, 0);
}
