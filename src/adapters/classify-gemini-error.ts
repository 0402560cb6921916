import { PipelineError, type ErrorClass } from '../domain/error-class.js';
import { maskSecrets } from './mask-secrets.js';

/**
 * Pure classification of everything Gemini can answer or throw, into the pipeline's
 * closed set of {@link ErrorClass}es. No SDK import: the shapes below declare only the
 * fields we read (kysely style), so the rules are unit-testable with plain objects.
 */

/** One content part of a Gemini answer (only the fields we read). */
export interface GeminiPartLike {
  readonly text?: string | undefined;
  readonly thought?: boolean | undefined;
  readonly inlineData?: { readonly data?: string | undefined; readonly mimeType?: string | undefined } | undefined;
}

/** A `generateContent` answer (only the fields we read). */
export interface GeminiResponseLike {
  readonly candidates?:
    | readonly {
        readonly content?: { readonly parts?: readonly GeminiPartLike[] | undefined } | undefined;
        readonly finishReason?: string | undefined;
        readonly finishMessage?: string | undefined;
      }[]
    | undefined;
  readonly promptFeedback?: { readonly blockReason?: string | undefined; readonly blockReasonMessage?: string | undefined } | undefined;
  readonly usageMetadata?:
    | { readonly promptTokenCount?: number | undefined; readonly candidatesTokenCount?: number | undefined; readonly totalTokenCount?: number | undefined }
    | undefined;
}

/** The image part picked from an answer: base64 data and the mime type the model declared. */
export interface GeminiInlineImage {
  readonly data: string;
  readonly mimeType: string;
}

/** Result of {@link classifyGeminiResponse}: the image to use, or why there is none. */
export type GeminiResponseVerdict = { readonly image: GeminiInlineImage } | { readonly error: PipelineError };

/**
 * Finish reasons that mean a safety filter removed the output. Sampling is random, so
 * another attempt may pass: `safety_blocked` is retryable (the slot budget bounds it, and
 * a stage stops after `maxSafetyBlocksInRow` of them in a row: `StageLedger`).
 */
export const SAFETY_FINISH_REASONS: ReadonlySet<string> = new Set(['SAFETY', 'RECITATION', 'BLOCKLIST', 'SPII', 'IMAGE_SAFETY', 'IMAGE_RECITATION']);

/**
 * Finish reasons that are a policy decision about the request itself (prompt or input
 * image), not about one sampled output: the same request is refused again, and each try is
 * billed. `prompt_blocked` (not retryable: the stage stops), like a `promptFeedback.blockReason`.
 */
export const POLICY_FINISH_REASONS: ReadonlySet<string> = new Set(['PROHIBITED_CONTENT', 'IMAGE_PROHIBITED_CONTENT']);

/** The API's "no block" value of `promptFeedback.blockReason` (`BlockedReason` in the SDK): not a block. */
export const BLOCKED_REASON_UNSPECIFIED = 'BLOCKED_REASON_UNSPECIFIED';

/**
 * Decides what a successful HTTP answer means.
 *
 * Rules, in order:
 * 1. `promptFeedback.blockReason` set (and not {@link BLOCKED_REASON_UNSPECIFIED}): the
 *    request is blocked -> `prompt_blocked` (not retryable).
 * 2. No candidate (`candidates` missing or `[]`) -> `no_image`.
 * 3. First candidate's `finishReason` is a policy block of the request
 *    ({@link POLICY_FINISH_REASONS}: `PROHIBITED_CONTENT`, `IMAGE_PROHIBITED_CONTENT`) ->
 *    `prompt_blocked`; safety-type ({@link SAFETY_FINISH_REASONS}) -> `safety_blocked`;
 *    either even if an image part slipped through: we never deliver filtered output.
 * 4. The last part that has non-empty `inlineData` with an `image/*` mime type and is
 *    not a `thought` is the answer (thought images are drafts; the final image comes last).
 * 5. Otherwise (text only, no parts, `NO_IMAGE`, `IMAGE_OTHER`, `OTHER`, `MAX_TOKENS`, ...) -> `no_image`.
 *
 * Whether the image bytes decode is not checked here (that needs sharp): the adapter does it.
 * Server-controlled text in messages is masked of `secrets` (the API key), then cut.
 */
export function classifyGeminiResponse(response: GeminiResponseLike, secrets: readonly string[] = []): GeminiResponseVerdict {
  const blockReason = response.promptFeedback?.blockReason;
  if (blockReason !== undefined && blockReason !== '' && blockReason !== BLOCKED_REASON_UNSPECIFIED) {
    const detail = response.promptFeedback?.blockReasonMessage;
    return {
      error: new PipelineError('prompt_blocked', `prompt blocked: ${maskSecrets(blockReason, secrets, 60)}${detail ? ` (${maskSecrets(detail, secrets, 300)})` : ''}`),
    };
  }
  const candidate = response.candidates?.[0];
  if (candidate === undefined) return { error: new PipelineError('no_image', 'no image: the answer has no candidates') };
  const finishReason = candidate.finishReason;
  if (finishReason !== undefined && POLICY_FINISH_REASONS.has(finishReason)) {
    const detail = candidate.finishMessage;
    return { error: new PipelineError('prompt_blocked', `request blocked by policy: finishReason ${finishReason}${detail ? ` (${maskSecrets(detail, secrets, 300)})` : ''}`) };
  }
  if (finishReason !== undefined && SAFETY_FINISH_REASONS.has(finishReason)) {
    return { error: new PipelineError('safety_blocked', `output blocked: finishReason ${finishReason}`) };
  }
  const parts = candidate.content?.parts ?? [];
  const images = parts.filter(
    (p) => p.thought !== true && typeof p.inlineData?.data === 'string' && p.inlineData.data.length > 0 && (p.inlineData.mimeType ?? 'image/').startsWith('image/'),
  );
  const last = images[images.length - 1];
  if (last?.inlineData?.data !== undefined) {
    return { image: { data: last.inlineData.data, mimeType: last.inlineData.mimeType ?? 'image/png' } };
  }
  const why =
    parts.length === 0
      ? 'the candidate has no parts'
      : parts.some((p) => typeof p.text === 'string' && p.thought !== true)
        ? 'the answer is text only'
        : 'no final image part';
  return { error: new PipelineError('no_image', `no image: ${why}${finishReason ? ` (finishReason ${maskSecrets(finishReason, secrets, 60)})` : ''}`) };
}

/** What the adapter knows about a failed call beyond the thrown error. */
export interface GeminiErrorContext {
  /** The adapter's own timeout fired (so an abort means `timeout`, not `cancelled`). */
  readonly timedOut?: boolean;
  /** The `Retry-After` header of the failed response, if one was seen. */
  readonly retryAfterHeader?: string | null | undefined;
  /** Current time (ms since epoch) for HTTP-date `Retry-After` values. Default `Date.now()`. */
  readonly now?: number;
  /** Strings that must never appear in a message (the API key). */
  readonly secrets?: readonly string[];
}

/**
 * Classifies anything a `generateContent` call throws into a {@link PipelineError}.
 *
 * | thrown | class |
 * | --- | --- |
 * | `ApiError` 429 with a quota that will not come back soon ({@link exhaustedQuota}: a `google.rpc.QuotaFailure` violation whose `quotaId` has `PerDay`, or a zero limit) | `quota_exhausted`, the message names the quota |
 * | `ApiError` 429 | `rate_limited`, `retryAfterMs` from `google.rpc.RetryInfo.retryDelay`, else `Retry-After` |
 * | 500, 502, 503 (any other 5xx) | `overloaded` |
 * | 504, 408 | `timeout` |
 * | 401, 403, 400 with reason `API_KEY_INVALID` | `auth` |
 * | 400, 404, 413, other 4xx | `invalid_request` |
 * | abort after our timeout, undici headers/body timeout | `timeout` |
 * | abort without our timeout (unsubscribe) | `cancelled` |
 * | `fetch failed`, `terminated`, ECONNRESET, ECONNREFUSED, socket errors, bad JSON | `network` |
 * | anything else | `network` (retryable: the budget decides) |
 *
 * Messages carry the HTTP status and the server's short message (at most 300
 * characters), never the API key and never image bytes: `secrets` are masked in
 * every form {@link maskSecrets} knows (any case, URL-encoded, pieces of 8+
 * characters) *before* the text is cut, so a cut cannot leave part of a key behind.
 */
export function classifyGeminiError(error: unknown, context: GeminiErrorContext = {}): PipelineError {
  if (error instanceof PipelineError) return error;
  // Mask first, then cut (maskSecrets does both in that order).
  const mask = (text: string, maxChars = 300): string => maskSecrets(text, context.secrets ?? [], maxChars);
  // The raw error is kept as `cause` only when no secret is in it: `console.log(pipelineError)` prints the cause.
  const cause = carriesSecret(error, context.secrets ?? []) ? undefined : error;
  const status = httpStatusOf(error);
  if (status !== undefined) {
    const body = parseGoogleErrorBody(errorMessage(error));
    const summary = `HTTP ${status}${body.status ? ` ${mask(body.status, 60)}` : ''}: ${mask(body.message ?? errorMessage(error))}`;
    const base = { httpStatus: status, cause };
    const errorClass = classForStatus(status, body.reasons);
    const quota = errorClass === 'rate_limited' ? exhaustedQuota(body) : undefined;
    if (quota !== undefined) {
      // The quota's name first: the message is cut at 300 characters and the name is what a reader needs.
      return new PipelineError('quota_exhausted', `HTTP ${status}${body.status ? ` ${mask(body.status, 60)}` : ''}: quota exhausted: ${mask(quota, 200)}: ${mask(body.message ?? errorMessage(error))}`, base);
    }
    if (errorClass === 'rate_limited') {
      const retryAfterMs = body.retryDelayMs ?? parseRetryAfterHeader(context.retryAfterHeader, context.now ?? Date.now());
      return new PipelineError('rate_limited', summary, { ...base, retryAfterMs });
    }
    return new PipelineError(errorClass, summary, base);
  }
  const message = mask(errorMessage(error));
  if (isAbort(error)) {
    return context.timedOut
      ? new PipelineError('timeout', 'generateContent timed out', { cause })
      : new PipelineError('cancelled', 'generateContent aborted', { cause });
  }
  if (context.timedOut) return new PipelineError('timeout', `generateContent timed out: ${message}`, { cause });
  const codes = errorCodes(error);
  if (codes.includes('UND_ERR_HEADERS_TIMEOUT') || codes.includes('UND_ERR_BODY_TIMEOUT')) {
    return new PipelineError('timeout', `generateContent timed out: ${message}`, { cause });
  }
  return new PipelineError('network', `network error: ${message}${codes.length > 0 ? ` [${codes.join(', ')}]` : ''}`, { cause });
}

/** HTTP status -> error class (see {@link classifyGeminiError}). */
export function classForStatus(status: number, reasons: readonly string[] = []): ErrorClass {
  if (status === 429) return 'rate_limited';
  if (status === 504 || status === 408) return 'timeout';
  if (status === 401 || status === 403) return 'auth';
  if (status === 400 && reasons.some((r) => r === 'API_KEY_INVALID' || r === 'API_KEY_EXPIRED')) return 'auth';
  if (status >= 500) return 'overloaded';
  return 'invalid_request';
}

/**
 * Parses a protobuf JSON `Duration` (`"2s"`, `"1.5s"`, `"0.250s"`) or its object form
 * (`{ seconds, nanos }`) into ms. Returns `undefined` for anything else.
 */
export function parseRetryDelay(value: unknown): number | undefined {
  if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$/.exec(value);
    if (!m) return undefined;
    const n = Number(m[1]);
    return Math.round(m[2] === 'ms' ? n : n * 1000);
  }
  if (value !== null && typeof value === 'object') {
    const { seconds, nanos } = value as { seconds?: unknown; nanos?: unknown };
    const s = Number(seconds ?? 0);
    const ns = Number(nanos ?? 0);
    if (!Number.isFinite(s) || !Number.isFinite(ns)) return undefined;
    return Math.round(s * 1000 + ns / 1e6);
  }
  return undefined;
}

/** Parses a `Retry-After` header (delta-seconds or an HTTP date) into ms from `now`. */
export function parseRetryAfterHeader(value: string | null | undefined, now: number): number | undefined {
  if (value === null || value === undefined || value.trim() === '') return undefined;
  const trimmed = value.trim();
  if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
  const at = Date.parse(trimmed);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

/** One `google.rpc.QuotaFailure` violation (the fields we read). */
export interface QuotaViolation {
  /** e.g. `GenerateRequestsPerDayPerProjectPerModel-FreeTier`. */
  readonly quotaId?: string | undefined;
  /** e.g. `generativelanguage.googleapis.com/generate_content_free_tier_requests`. */
  readonly quotaMetric?: string | undefined;
  /** The quota's limit, when the server says it (a string in the JSON: `"0"`). */
  readonly quotaValue?: string | undefined;
}

/** The parts of a Google JSON error body (`{ error: { code, message, status, details } }`) we use. */
export interface GoogleErrorBody {
  readonly message?: string | undefined;
  readonly status?: string | undefined;
  readonly retryDelayMs?: number | undefined;
  /** `google.rpc.ErrorInfo.reason`s, e.g. `API_KEY_INVALID`. */
  readonly reasons: readonly string[];
  /** `google.rpc.QuotaFailure.violations`, in order (absent: none). */
  readonly quotaViolations?: readonly QuotaViolation[];
}

/**
 * The quota a 429 says is gone for longer than a retry can wait, or undefined for a
 * plain rate limit. Gone: a `QuotaFailure` violation whose `quotaId` has `PerDay` (a daily
 * quota, back tomorrow), or a zero limit (`quotaValue: "0"`, or `limit: 0` in the message:
 * what a key without billing gets for image models, however long it waits). A per-minute
 * violation alone is a rate limit. Returns the quota ids (or metrics) that decided it.
 *
 * @example
 * exhaustedQuota(parseGoogleErrorBody(body)) // 'GenerateRequestsPerDayPerProjectPerModel-FreeTier'
 */
export function exhaustedQuota(body: GoogleErrorBody): string | undefined {
  const violations = body.quotaViolations ?? [];
  const name = (v: QuotaViolation): string => v.quotaId ?? v.quotaMetric ?? 'unnamed quota';
  const daily = violations.filter((v) => /PerDay/i.test(v.quotaId ?? '') || /per_day/i.test(v.quotaMetric ?? ''));
  const zero = violations.filter((v) => v.quotaValue !== undefined && Number(v.quotaValue) === 0);
  const decided = [...new Set([...zero, ...daily].map(name))];
  if (decided.length > 0) return `${decided.join(', ')}${zero.length > 0 ? ' (limit 0)' : ''}`;
  // `* Quota exceeded for metric: <metric>, limit: 0, model: <model>` in the message.
  const zeroInMessage = /Quota exceeded for metric:\s*([^\s,]+),\s*limit:\s*0\b/i.exec(body.message ?? '');
  if (zeroInMessage) return `${zeroInMessage[1]} (limit 0)`;
  return undefined;
}

/** Parses the JSON text the SDK puts in `ApiError.message`; tolerant of anything else. */
export function parseGoogleErrorBody(text: string): GoogleErrorBody {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { reasons: [] };
  }
  // JSON from the network: read it through narrow casts of `unknown`.
  const err = (parsed as { error?: { message?: unknown; status?: unknown; details?: unknown } } | null)?.error;
  if (err === undefined || err === null || typeof err !== 'object') return { reasons: [] };
  const details = Array.isArray(err.details) ? (err.details as { '@type'?: unknown; retryDelay?: unknown; reason?: unknown; violations?: unknown }[]) : [];
  let retryDelayMs: number | undefined;
  const reasons: string[] = [];
  const quotaViolations: QuotaViolation[] = [];
  const asText = (value: unknown): string | undefined => (typeof value === 'string' ? value : typeof value === 'number' ? String(value) : undefined);
  for (const d of details) {
    if (d === null || typeof d !== 'object') continue;
    const type = typeof d['@type'] === 'string' ? d['@type'] : '';
    if (type.endsWith('google.rpc.RetryInfo')) retryDelayMs ??= parseRetryDelay(d.retryDelay);
    if (type.endsWith('google.rpc.QuotaFailure') && Array.isArray(d.violations)) {
      for (const v of d.violations as { quotaId?: unknown; quotaMetric?: unknown; quotaValue?: unknown }[]) {
        if (v === null || typeof v !== 'object') continue;
        quotaViolations.push({ quotaId: asText(v.quotaId), quotaMetric: asText(v.quotaMetric), quotaValue: asText(v.quotaValue) });
      }
    }
    if (typeof d.reason === 'string') reasons.push(d.reason);
  }
  return {
    message: typeof err.message === 'string' ? err.message : undefined,
    status: typeof err.status === 'string' ? err.status : undefined,
    retryDelayMs,
    reasons,
    ...(quotaViolations.length > 0 ? { quotaViolations } : {}),
  };
}

function httpStatusOf(error: unknown): number | undefined {
  if (error === null || typeof error !== 'object') return undefined;
  const status = (error as { status?: unknown }).status;
  return typeof status === 'number' && status >= 400 && status < 600 ? status : undefined;
}

function isAbort(error: unknown): boolean {
  if (error === null || typeof error !== 'object') return false;
  const name = (error as { name?: unknown }).name;
  return name === 'AbortError' || name === 'TimeoutError' || errorCodes(error).includes('ABORT_ERR');
}

/** Whether a secret shows in the message or stack of `error` or of its `cause` chain. */
function carriesSecret(error: unknown, secrets: readonly string[]): boolean {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current !== null && current !== undefined; depth++) {
    const texts = current instanceof Error ? [current.message, current.stack ?? ''] : [String(current)];
    if (texts.some((t) => maskSecrets(t, secrets) !== t)) return true;
    current = typeof current === 'object' ? (current as { cause?: unknown }).cause : undefined;
  }
  return false;
}

/** `code`s along the `cause` chain (undici hides ECONNRESET in `cause`). */
function errorCodes(error: unknown): string[] {
  const codes: string[] = [];
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current !== null && typeof current === 'object'; depth++) {
    const code = (current as { code?: unknown }).code;
    if (typeof code === 'string' && !codes.includes(code)) codes.push(code);
    current = (current as { cause?: unknown }).cause;
  }
  return codes;
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
