import { describe, expect, it } from 'vitest';
import { PipelineError } from '../../src/domain/error-class.js';
import {
  classifyGeminiError,
  classifyGeminiResponse,
  parseGoogleErrorBody,
  parseRetryAfterHeader,
  parseRetryDelay,
  type GeminiResponseLike,
} from '../../src/adapters/classify-gemini-error.js';

/** An error shaped like @google/genai's ApiError (message = JSON body, numeric status). */
function apiError(status: number, body: unknown): Error {
  return Object.assign(new Error(JSON.stringify(body)), { name: 'ApiError', status });
}

function googleBody(code: number, status: string, details?: unknown[]): unknown {
  return { error: { code, message: `message for ${code}`, status, ...(details ? { details } : {}) } };
}

const retryInfo = (retryDelay: unknown) => ({ '@type': 'type.googleapis.com/google.rpc.RetryInfo', retryDelay });
const png = { inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } };

function verdictClass(response: GeminiResponseLike): string {
  const verdict = classifyGeminiResponse(response);
  return 'error' in verdict ? verdict.error.errorClass : 'image';
}

describe('classifyGeminiResponse', () => {
  it('takes the last non-thought image part', () => {
    const verdict = classifyGeminiResponse({
      candidates: [
        {
          content: {
            parts: [
              { text: 'thinking', thought: true },
              { inlineData: { mimeType: 'image/png', data: 'DRAFT' }, thought: true },
              { inlineData: { mimeType: 'image/jpeg', data: 'FIRST' } },
              { text: 'caption' },
              { inlineData: { mimeType: 'image/png', data: 'LAST' } },
              { inlineData: { mimeType: 'image/png', data: 'THOUGHT_AFTER' }, thought: true },
            ],
          },
          finishReason: 'STOP',
        },
      ],
    });
    expect(verdict).toEqual({ image: { data: 'LAST', mimeType: 'image/png' } });
  });

  it('a blocked prompt is prompt_blocked (not retryable), whatever else the answer holds', () => {
    const verdict = classifyGeminiResponse({ promptFeedback: { blockReason: 'PROHIBITED_CONTENT' }, candidates: [{ content: { parts: [png] } }] });
    expect('error' in verdict && verdict.error.errorClass).toBe('prompt_blocked');
    expect('error' in verdict && verdict.error.retryable).toBe(false);
  });

  it.each([
    ['text only', { candidates: [{ content: { parts: [{ text: 'no' }] }, finishReason: 'STOP' }] }],
    ['a candidate without parts', { candidates: [{ content: {}, finishReason: 'STOP' }] }],
    ['a candidate without content', { candidates: [{ finishReason: 'STOP' }] }],
    ['candidates: []', { candidates: [] }],
    ['no candidates field', {}],
    ['only a thought image', { candidates: [{ content: { parts: [{ ...png, thought: true }] } }] }],
    ['an image part with empty data', { candidates: [{ content: { parts: [{ inlineData: { mimeType: 'image/png', data: '' } }] } }] }],
    ['a non-image inline part', { candidates: [{ content: { parts: [{ inlineData: { mimeType: 'text/plain', data: 'aGk=' } }] } }] }],
    // The API's "not blocked" value (`BlockedReason.BLOCKED_REASON_UNSPECIFIED`): no block, so no candidate is just no image.
    ['an unspecified block reason', { promptFeedback: { blockReason: 'BLOCKED_REASON_UNSPECIFIED' }, candidates: [] }],
  ] as [string, GeminiResponseLike][])('%s -> no_image', (_name, response) => {
    expect(verdictClass(response)).toBe('no_image');
  });

  it.each([
    ['IMAGE_SAFETY', 'safety_blocked'],
    ['IMAGE_RECITATION', 'safety_blocked'],
    ['SAFETY', 'safety_blocked'],
    ['RECITATION', 'safety_blocked'],
    ['BLOCKLIST', 'safety_blocked'],
    ['SPII', 'safety_blocked'],
    ['NO_IMAGE', 'no_image'],
    ['IMAGE_OTHER', 'no_image'],
    ['OTHER', 'no_image'],
    ['MAX_TOKENS', 'no_image'],
  ])('finishReason %s without an image -> %s', (reason, expected) => {
    expect(verdictClass({ candidates: [{ content: { parts: [] }, finishReason: reason }] })).toBe(expected);
    expect(classifyGeminiResponse({ candidates: [{ content: { parts: [] }, finishReason: reason }] })).toMatchObject({
      error: { retryable: true },
    });
  });

  it('a safety finish wins over an image part that slipped through', () => {
    expect(verdictClass({ candidates: [{ content: { parts: [png] }, finishReason: 'IMAGE_SAFETY' }] })).toBe('safety_blocked');
  });

  it('an image with finishReason STOP is the answer', () => {
    expect(verdictClass({ candidates: [{ content: { parts: [png] }, finishReason: 'STOP' }] })).toBe('image');
  });
});

describe('classifyGeminiError', () => {
  it('429 with RetryInfo -> rate_limited with retryAfterMs from retryDelay (wins over Retry-After)', () => {
    const error = classifyGeminiError(apiError(429, googleBody(429, 'RESOURCE_EXHAUSTED', [retryInfo('1.5s')])), { retryAfterHeader: '9' });
    expect(error).toMatchObject({ errorClass: 'rate_limited', retryAfterMs: 1500, httpStatus: 429, retryable: true });
  });

  it('429 without RetryInfo falls back to the Retry-After header (seconds or HTTP date)', () => {
    expect(classifyGeminiError(apiError(429, googleBody(429, 'RESOURCE_EXHAUSTED')), { retryAfterHeader: '3' }).retryAfterMs).toBe(3000);
    const now = Date.parse('2026-01-01T00:00:00Z');
    const dated = classifyGeminiError(apiError(429, googleBody(429, 'RESOURCE_EXHAUSTED')), { retryAfterHeader: 'Thu, 01 Jan 2026 00:00:04 GMT', now });
    expect(dated.retryAfterMs).toBe(4000);
    expect(classifyGeminiError(apiError(429, googleBody(429, 'RESOURCE_EXHAUSTED'))).retryAfterMs).toBeUndefined();
  });

  it.each([
    [500, 'overloaded'],
    [502, 'overloaded'],
    [503, 'overloaded'],
    [504, 'timeout'],
    [408, 'timeout'],
    [400, 'invalid_request'],
    [404, 'invalid_request'],
    [401, 'auth'],
    [403, 'auth'],
  ])('HTTP %i -> %s, with httpStatus', (status, expected) => {
    const error = classifyGeminiError(apiError(status, googleBody(status, 'X')));
    expect(error.errorClass).toBe(expected);
    expect(error.httpStatus).toBe(status);
  });

  it('400 with reason API_KEY_INVALID -> auth (that is how Gemini answers a bad key)', () => {
    const body = googleBody(400, 'INVALID_ARGUMENT', [{ '@type': 'type.googleapis.com/google.rpc.ErrorInfo', reason: 'API_KEY_INVALID' }]);
    expect(classifyGeminiError(apiError(400, body)).errorClass).toBe('auth');
  });

  it('a non-JSON ApiError message still classifies by status', () => {
    const error = Object.assign(new Error('<html>bad gateway</html>'), { status: 503 });
    expect(classifyGeminiError(error).errorClass).toBe('overloaded');
  });

  it('network failures -> network', () => {
    const fetchFailed = new TypeError('fetch failed', { cause: Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }) });
    expect(classifyGeminiError(fetchFailed).errorClass).toBe('network');
    expect(classifyGeminiError(new TypeError('terminated')).errorClass).toBe('network');
    expect(classifyGeminiError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })).errorClass).toBe('network');
    expect(classifyGeminiError(new SyntaxError('Unexpected end of JSON input')).errorClass).toBe('network');
  });

  it('an abort is timeout when our timer fired, cancelled otherwise', () => {
    const abort = new DOMException('This operation was aborted', 'AbortError');
    expect(classifyGeminiError(abort, { timedOut: true }).errorClass).toBe('timeout');
    expect(classifyGeminiError(abort, { timedOut: false }).errorClass).toBe('cancelled');
  });

  it('undici header/body timeouts -> timeout', () => {
    const error = new TypeError('fetch failed', { cause: Object.assign(new Error('Headers Timeout Error'), { code: 'UND_ERR_HEADERS_TIMEOUT' }) });
    expect(classifyGeminiError(error).errorClass).toBe('timeout');
  });

  it('passes a PipelineError through unchanged', () => {
    const original = new PipelineError('corrupt_image', 'x');
    expect(classifyGeminiError(original)).toBe(original);
  });

  it('never puts a secret into the message', () => {
    const body = { error: { code: 400, message: 'bad key SECRET-KEY-123 used', status: 'INVALID_ARGUMENT' } };
    const error = classifyGeminiError(apiError(400, body), { secrets: ['SECRET-KEY-123'] });
    expect(error.message).not.toContain('SECRET-KEY-123');
    const net = classifyGeminiError(new Error('connect to ?key=SECRET-KEY-123 failed'), { secrets: ['SECRET-KEY-123'] });
    expect(net.message).not.toContain('SECRET-KEY-123');
  });
});

describe('retry delay parsing', () => {
  it.each([
    ['2s', 2000],
    ['1.5s', 1500],
    ['0.250s', 250],
    ['30s', 30000],
    ['100ms', 100],
  ])('parseRetryDelay(%s) = %i', (text, ms) => expect(parseRetryDelay(text)).toBe(ms));

  it('parses the object form and rejects junk', () => {
    expect(parseRetryDelay({ seconds: 3, nanos: 500_000_000 })).toBe(3500);
    expect(parseRetryDelay('soon')).toBeUndefined();
    expect(parseRetryDelay(undefined)).toBeUndefined();
  });

  it('parseRetryAfterHeader handles seconds, dates in the past, and junk', () => {
    expect(parseRetryAfterHeader('7', 0)).toBe(7000);
    expect(parseRetryAfterHeader('Thu, 01 Jan 1970 00:00:00 GMT', 5000)).toBe(0);
    expect(parseRetryAfterHeader('later', 0)).toBeUndefined();
    expect(parseRetryAfterHeader(null, 0)).toBeUndefined();
  });

  it('parseGoogleErrorBody reads status, message, RetryInfo and reasons', () => {
    const body = parseGoogleErrorBody(JSON.stringify(googleBody(429, 'RESOURCE_EXHAUSTED', [retryInfo('4s'), { reason: 'RATE_LIMIT_EXCEEDED' }])));
    expect(body).toEqual({ message: 'message for 429', status: 'RESOURCE_EXHAUSTED', retryDelayMs: 4000, reasons: ['RATE_LIMIT_EXCEEDED'] });
    expect(parseGoogleErrorBody('not json')).toEqual({ reasons: [] });
  });
});

/**
 * The bodies the real service sends (shapes taken from answers of the Gemini API, keys
 * and project numbers left out), through `classifyGeminiError` as the SDK's `ApiError`
 * carries them, or `classifyGeminiResponse` for a 200 answer.
 */
describe('the real service bodies', () => {
  const quotaFailure = (violations: unknown[]) => ({ '@type': 'type.googleapis.com/google.rpc.QuotaFailure', violations });
  const help = { '@type': 'type.googleapis.com/google.rpc.Help', links: [{ description: 'Learn more about Gemini API quotas', url: 'https://ai.google.dev/gemini-api/docs/rate-limits' }] };
  const dims = { location: 'global', model: 'gemini-2.5-flash-image' };

  /** A key without billing asking an image model: every free-tier quota of the model is 0. */
  const freeTierBody = {
    error: {
      code: 429,
      message:
        'You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_input_token_count, limit: 0, model: gemini-2.5-flash-image\n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-2.5-flash-image\nPlease retry in 34.227570297s.',
      status: 'RESOURCE_EXHAUSTED',
      details: [
        help,
        quotaFailure([
          { quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_input_token_count', quotaId: 'GenerateContentInputTokensPerModelPerMinute-FreeTier', quotaDimensions: dims },
          { quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests', quotaId: 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier', quotaDimensions: dims },
          { quotaMetric: 'generativelanguage.googleapis.com/generate_content_free_tier_requests', quotaId: 'GenerateRequestsPerDayPerProjectPerModel-FreeTier', quotaDimensions: dims },
        ]),
        retryInfo('34s'),
      ],
    },
  };

  it('a daily-quota 429 with QuotaFailure -> quota_exhausted, not retryable, naming the daily quota', () => {
    const error = classifyGeminiError(apiError(429, freeTierBody));
    expect(error).toMatchObject({ errorClass: 'quota_exhausted', retryable: false, httpStatus: 429 });
    expect(error.message).toContain('quota exhausted: GenerateRequestsPerDayPerProjectPerModel-FreeTier');
    // The per-minute quotas of the same body are not what decided it.
    expect(error.message).not.toMatch(/quota exhausted: [^:]*PerMinute/);
  });

  it('a paid tier daily limit (only a PerDay violation) -> quota_exhausted', () => {
    const body = {
      error: {
        code: 429,
        message: 'You exceeded your current quota. Go to https://aistudio.google.com/apikey to upgrade your quota tier.',
        status: 'RESOURCE_EXHAUSTED',
        details: [quotaFailure([{ quotaMetric: 'generativelanguage.googleapis.com/generate_requests_per_model_per_day', quotaId: 'GenerateRequestsPerDayPerProjectPerModel' }]), retryInfo('20s')],
      },
    };
    const error = classifyGeminiError(apiError(429, body));
    expect(error.errorClass).toBe('quota_exhausted');
    expect(error.message).toContain('GenerateRequestsPerDayPerProjectPerModel');
  });

  it('a per-minute 429 with QuotaFailure and RetryInfo -> rate_limited, retryAfterMs from RetryInfo', () => {
    const body = {
      error: {
        code: 429,
        message: 'Resource has been exhausted (e.g. check quota).',
        status: 'RESOURCE_EXHAUSTED',
        details: [
          quotaFailure([{ quotaMetric: 'generativelanguage.googleapis.com/generate_content_paid_tier_requests', quotaId: 'GenerateRequestsPerMinutePerProjectPerModel', quotaDimensions: dims, quotaValue: '500' }]),
          help,
          retryInfo('17s'),
        ],
      },
    };
    expect(classifyGeminiError(apiError(429, body))).toMatchObject({ errorClass: 'rate_limited', retryable: true, retryAfterMs: 17_000 });
  });

  it('a zero quota (quotaValue "0") is exhausted even when its id is per minute', () => {
    const body = googleBody(429, 'RESOURCE_EXHAUSTED', [quotaFailure([{ quotaId: 'GenerateRequestsPerMinutePerProjectPerModel-FreeTier', quotaValue: '0' }]), retryInfo('5s')]);
    const error = classifyGeminiError(apiError(429, body));
    expect(error.errorClass).toBe('quota_exhausted');
    expect(error.message).toContain('GenerateRequestsPerMinutePerProjectPerModel-FreeTier (limit 0)');
  });

  it('"limit: 0" in the message without a QuotaFailure -> quota_exhausted naming the metric', () => {
    const body = { error: { code: 429, message: '* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: 0, model: gemini-3-pro-image', status: 'RESOURCE_EXHAUSTED' } };
    const error = classifyGeminiError(apiError(429, body));
    expect(error.errorClass).toBe('quota_exhausted');
    expect(error.message).toContain('generativelanguage.googleapis.com/generate_content_free_tier_requests (limit 0)');
  });

  it('BLOCKED_REASON_UNSPECIFIED on a harmless answer: the image is delivered, not prompt_blocked', () => {
    const verdict = classifyGeminiResponse({
      promptFeedback: { blockReason: 'BLOCKED_REASON_UNSPECIFIED' },
      candidates: [{ content: { parts: [{ text: 'Here you go.' }, png] }, finishReason: 'STOP' }],
      usageMetadata: { promptTokenCount: 10, candidatesTokenCount: 1290, totalTokenCount: 1300 },
    });
    expect(verdict).toEqual({ image: { data: png.inlineData.data, mimeType: 'image/png' } });
  });

  it.each(['PROHIBITED_CONTENT', 'IMAGE_PROHIBITED_CONTENT'])('finishReason %s -> prompt_blocked (a policy decision: not retryable)', (reason) => {
    const verdict = classifyGeminiResponse({
      candidates: [{ finishReason: reason, finishMessage: 'The request was blocked by policy.' }],
      usageMetadata: { promptTokenCount: 258, totalTokenCount: 258 },
    });
    expect(verdict).toMatchObject({ error: { errorClass: 'prompt_blocked', retryable: false } });
    expect('error' in verdict && verdict.error.message).toContain(reason);
  });

  it('promptFeedback.blockReason PROHIBITED_CONTENT -> prompt_blocked', () => {
    const verdict = classifyGeminiResponse({ promptFeedback: { blockReason: 'PROHIBITED_CONTENT' }, usageMetadata: { promptTokenCount: 8, totalTokenCount: 8 } });
    expect(verdict).toMatchObject({ error: { errorClass: 'prompt_blocked', retryable: false } });
  });

  it('finishReason IMAGE_SAFETY (even with an image part) -> safety_blocked, retryable', () => {
    const verdict = classifyGeminiResponse({
      candidates: [{ content: { parts: [png] }, finishReason: 'IMAGE_SAFETY', finishMessage: 'Unable to show the generated image.' }],
    });
    expect(verdict).toMatchObject({ error: { errorClass: 'safety_blocked', retryable: true } });
  });
});
