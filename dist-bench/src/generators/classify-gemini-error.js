import { PipelineError } from '../domain/error-class.js';
/**
 * Finish reasons that mean a safety / policy filter removed the output. Sampling is
 * random, so another attempt may pass: `safety_blocked` is retryable (the budget bounds it).
 */
export const SAFETY_FINISH_REASONS = new Set([
    'SAFETY',
    'PROHIBITED_CONTENT',
    'RECITATION',
    'BLOCKLIST',
    'SPII',
    'IMAGE_SAFETY',
    'IMAGE_PROHIBITED_CONTENT',
    'IMAGE_RECITATION',
]);
/**
 * Decides what a successful HTTP answer means.
 *
 * Rules, in order:
 * 1. `promptFeedback.blockReason` set: the prompt itself is blocked -> `prompt_blocked` (not retryable).
 * 2. No candidate (`candidates` missing or `[]`) -> `no_image`.
 * 3. First candidate's `finishReason` is safety-type ({@link SAFETY_FINISH_REASONS}) ->
 *    `safety_blocked`, even if an image part slipped through: we never deliver filtered output.
 * 4. The last part that has non-empty `inlineData` with an `image/*` mime type and is
 *    not a `thought` is the answer (thought images are drafts; the final image comes last).
 * 5. Otherwise (text only, no parts, `NO_IMAGE`, `IMAGE_OTHER`, `OTHER`, `MAX_TOKENS`, ...) -> `no_image`.
 *
 * Whether the image bytes decode is not checked here (that needs sharp): the adapter does it.
 */
export function classifyGeminiResponse(response) {
    const blockReason = response.promptFeedback?.blockReason;
    if (blockReason !== undefined && blockReason !== '' && blockReason !== 'BLOCK_REASON_UNSPECIFIED') {
        const detail = response.promptFeedback?.blockReasonMessage;
        return { error: new PipelineError('prompt_blocked', `prompt blocked: ${blockReason}${detail ? ` (${clip(detail)})` : ''}`) };
    }
    const candidate = response.candidates?.[0];
    if (candidate === undefined)
        return { error: new PipelineError('no_image', 'no image: the answer has no candidates') };
    const finishReason = candidate.finishReason;
    if (finishReason !== undefined && SAFETY_FINISH_REASONS.has(finishReason)) {
        return { error: new PipelineError('safety_blocked', `output blocked: finishReason ${finishReason}`) };
    }
    const parts = candidate.content?.parts ?? [];
    const images = parts.filter((p) => p.thought !== true && typeof p.inlineData?.data === 'string' && p.inlineData.data.length > 0 && (p.inlineData.mimeType ?? 'image/').startsWith('image/'));
    const last = images[images.length - 1];
    if (last?.inlineData?.data !== undefined) {
        return { image: { data: last.inlineData.data, mimeType: last.inlineData.mimeType ?? 'image/png' } };
    }
    const why = parts.length === 0
        ? 'the candidate has no parts'
        : parts.some((p) => typeof p.text === 'string' && p.thought !== true)
            ? 'the answer is text only'
            : 'no final image part';
    return { error: new PipelineError('no_image', `no image: ${why}${finishReason ? ` (finishReason ${finishReason})` : ''}`) };
}
/**
 * Classifies anything a `generateContent` call throws into a {@link PipelineError}.
 *
 * | thrown | class |
 * | --- | --- |
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
 * Messages carry the HTTP status and the server's short message, never the API key
 * (`secrets` are scrubbed) and never image bytes.
 */
export function classifyGeminiError(error, context = {}) {
    if (error instanceof PipelineError)
        return error;
    const scrub = (text) => (context.secrets ?? []).reduce((t, s) => (s ? t.split(s).join('***') : t), text);
    const status = httpStatusOf(error);
    if (status !== undefined) {
        const body = parseGoogleErrorBody(errorMessage(error));
        const summary = scrub(`HTTP ${status}${body.status ? ` ${body.status}` : ''}: ${clip(body.message ?? errorMessage(error))}`);
        const base = { httpStatus: status, cause: error };
        const errorClass = classForStatus(status, body.reasons);
        if (errorClass === 'rate_limited') {
            const retryAfterMs = body.retryDelayMs ?? parseRetryAfterHeader(context.retryAfterHeader, context.now ?? Date.now());
            return new PipelineError('rate_limited', summary, { ...base, retryAfterMs });
        }
        return new PipelineError(errorClass, summary, base);
    }
    const message = scrub(clip(errorMessage(error)));
    if (isAbort(error)) {
        return context.timedOut
            ? new PipelineError('timeout', 'generateContent timed out', { cause: error })
            : new PipelineError('cancelled', 'generateContent aborted', { cause: error });
    }
    if (context.timedOut)
        return new PipelineError('timeout', `generateContent timed out: ${message}`, { cause: error });
    const codes = errorCodes(error);
    if (codes.includes('UND_ERR_HEADERS_TIMEOUT') || codes.includes('UND_ERR_BODY_TIMEOUT')) {
        return new PipelineError('timeout', `generateContent timed out: ${message}`, { cause: error });
    }
    return new PipelineError('network', `network error: ${message}${codes.length > 0 ? ` [${codes.join(', ')}]` : ''}`, { cause: error });
}
/** HTTP status -> error class (see {@link classifyGeminiError}). */
export function classForStatus(status, reasons = []) {
    if (status === 429)
        return 'rate_limited';
    if (status === 504 || status === 408)
        return 'timeout';
    if (status === 401 || status === 403)
        return 'auth';
    if (status === 400 && reasons.some((r) => r === 'API_KEY_INVALID' || r === 'API_KEY_EXPIRED'))
        return 'auth';
    if (status >= 500)
        return 'overloaded';
    return 'invalid_request';
}
/**
 * Parses a protobuf JSON `Duration` (`"2s"`, `"1.5s"`, `"0.250s"`) or its object form
 * (`{ seconds, nanos }`) into ms. Returns `undefined` for anything else.
 */
export function parseRetryDelay(value) {
    if (typeof value === 'string') {
        const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*$/.exec(value);
        if (!m)
            return undefined;
        const n = Number(m[1]);
        return Math.round(m[2] === 'ms' ? n : n * 1000);
    }
    if (value !== null && typeof value === 'object') {
        const { seconds, nanos } = value;
        const s = Number(seconds ?? 0);
        const ns = Number(nanos ?? 0);
        if (!Number.isFinite(s) || !Number.isFinite(ns))
            return undefined;
        return Math.round(s * 1000 + ns / 1e6);
    }
    return undefined;
}
/** Parses a `Retry-After` header (delta-seconds or an HTTP date) into ms from `now`. */
export function parseRetryAfterHeader(value, now) {
    if (value === null || value === undefined || value.trim() === '')
        return undefined;
    const trimmed = value.trim();
    if (/^\d+(\.\d+)?$/.test(trimmed))
        return Math.round(Number(trimmed) * 1000);
    const at = Date.parse(trimmed);
    if (Number.isNaN(at))
        return undefined;
    return Math.max(0, at - now);
}
/** Parses the JSON text the SDK puts in `ApiError.message`; tolerant of anything else. */
export function parseGoogleErrorBody(text) {
    let parsed;
    try {
        parsed = JSON.parse(text);
    }
    catch {
        return { reasons: [] };
    }
    // JSON from the network: read it through narrow casts of `unknown`.
    const err = parsed?.error;
    if (err === undefined || err === null || typeof err !== 'object')
        return { reasons: [] };
    const details = Array.isArray(err.details) ? err.details : [];
    let retryDelayMs;
    const reasons = [];
    for (const d of details) {
        if (d === null || typeof d !== 'object')
            continue;
        const type = typeof d['@type'] === 'string' ? d['@type'] : '';
        if (type.endsWith('google.rpc.RetryInfo'))
            retryDelayMs ??= parseRetryDelay(d.retryDelay);
        if (typeof d.reason === 'string')
            reasons.push(d.reason);
    }
    return {
        message: typeof err.message === 'string' ? err.message : undefined,
        status: typeof err.status === 'string' ? err.status : undefined,
        retryDelayMs,
        reasons,
    };
}
function httpStatusOf(error) {
    if (error === null || typeof error !== 'object')
        return undefined;
    const status = error.status;
    return typeof status === 'number' && status >= 400 && status < 600 ? status : undefined;
}
function isAbort(error) {
    if (error === null || typeof error !== 'object')
        return false;
    const name = error.name;
    return name === 'AbortError' || name === 'TimeoutError' || errorCodes(error).includes('ABORT_ERR');
}
/** `code`s along the `cause` chain (undici hides ECONNRESET in `cause`). */
function errorCodes(error) {
    const codes = [];
    let current = error;
    for (let depth = 0; depth < 5 && current !== null && typeof current === 'object'; depth++) {
        const code = current.code;
        if (typeof code === 'string' && !codes.includes(code))
            codes.push(code);
        current = current.cause;
    }
    return codes;
}
function errorMessage(error) {
    return error instanceof Error ? error.message : String(error);
}
function clip(text, max = 300) {
    return text.length > max ? `${text.slice(0, max)}...` : text;
}
