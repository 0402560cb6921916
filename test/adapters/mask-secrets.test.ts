/**
 * The API key never survives into a message: masked before the cut (a key cut at the
 * 300-character limit used to leave up to 39 of its 40 characters), in any letter
 * case, URL-encoded, and as any piece of 8+ characters at the cut.
 */
import { describe, expect, it } from 'vitest';
import { classifyGeminiError } from '../../src/adapters/classify-gemini-error.js';
import { maskSecrets, MIN_SECRET_FRAGMENT } from '../../src/adapters/mask-secrets.js';

// 40 characters, with characters that URL-encoding changes.
const KEY = 'AIzaSy/Echo+Key=0123456789abcdefghijklmn';
const FORMS: Record<string, string> = {
  raw: KEY,
  'upper-cased': KEY.toUpperCase(),
  'lower-cased': KEY.toLowerCase(),
  'URL-encoded': encodeURIComponent(KEY),
  'URL-encoded, lower-case hex': encodeURIComponent(KEY).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase()),
};

/** Pieces of the key (in any of its forms) of 8+ characters that `text` shows, case-insensitively. */
function keyPieces(text: string): string[] {
  const lower = text.toLowerCase();
  const found: string[] = [];
  for (const form of [KEY, encodeURIComponent(KEY)].map((f) => f.toLowerCase())) {
    for (let i = 0; i + MIN_SECRET_FRAGMENT <= form.length; i++) {
      const piece = form.slice(i, i + MIN_SECRET_FRAGMENT);
      if (lower.includes(piece)) found.push(piece);
    }
  }
  return found;
}

/** A Google error as the SDK throws it: JSON body in the message, HTTP status. */
function apiError(status: number, message: string): Error {
  return Object.assign(new Error(JSON.stringify({ error: { code: status, message, status: 'UNAVAILABLE' } })), { status });
}

describe('maskSecrets', () => {
  for (const [name, form] of Object.entries(FORMS)) {
    it(`the ${name} key echoed at every offset around the 300-character cut leaves no piece of 8+ characters`, () => {
      for (let offset = 300 - form.length - 5; offset <= 305; offset++) {
        const text = `${'x'.repeat(offset)}${form} and more text after it`;
        const masked = maskSecrets(text, [KEY], 300);
        expect({ offset, pieces: keyPieces(masked) }).toEqual({ offset, pieces: [] });
        expect(masked.length).toBeLessThanOrEqual(303);
        // Masked first, then cut: a key that starts before the cut leaves its mask, not its head.
        if (offset + 3 <= 300) expect(masked.slice(offset, offset + 3)).toBe('***');
      }
    });
  }

  it('a key prefix of 8+ characters the server cut itself is masked, at the end of the text and at our cut', () => {
    for (let length = MIN_SECRET_FRAGMENT; length < KEY.length; length++) {
      const piece = KEY.slice(0, length);
      expect(keyPieces(maskSecrets(`bad key ${piece}`, [KEY], 300))).toEqual([]);
      expect(keyPieces(maskSecrets(`${'y'.repeat(290)}${piece}zzzz`, [KEY], 300))).toEqual([]);
    }
  });

  it('text without the key is unchanged (short) or only cut (long); empty secrets are ignored', () => {
    expect(maskSecrets('HTTP 503: try later', [KEY], 300)).toBe('HTTP 503: try later');
    expect(maskSecrets('a'.repeat(400), [KEY], 300)).toBe(`${'a'.repeat(300)}...`);
    expect(maskSecrets('nothing to hide', [''], 300)).toBe('nothing to hide');
    expect(maskSecrets(`two ${KEY} and ${KEY.toUpperCase()}`, [KEY])).toBe('two *** and ***');
  });

  it('a huge body costs no more than a short one: only what survives the cut is scanned for pieces', () => {
    const text = `${'z'.repeat(2_000_000)}${KEY}`;
    const masked = maskSecrets(`${KEY.slice(0, 20)} ${text}`, [KEY], 300);
    expect(masked.startsWith('*** ')).toBe(true);
    expect(masked.length).toBe(303);
  });
});

describe('classifyGeminiError masks before it cuts', () => {
  for (const [name, form] of Object.entries(FORMS)) {
    it(`a server echoing the ${name} key at every offset around the cut: no piece of the key in the message`, () => {
      for (let offset = 300 - form.length - 5; offset <= 305; offset++) {
        const error = classifyGeminiError(apiError(503, `${'x'.repeat(offset)}${form} trailing`), { secrets: [KEY] });
        expect(error.errorClass).toBe('overloaded');
        expect({ offset, pieces: keyPieces(error.message) }).toEqual({ offset, pieces: [] });
        // The raw SDK error (which holds the key) is not kept as the cause.
        expect(error.cause).toBeUndefined();
      }
    });
  }

  it('the status name and a network error message are masked too; a clean error keeps its cause', () => {
    const statusEcho = Object.assign(new Error(JSON.stringify({ error: { code: 400, message: 'no', status: KEY } })), { status: 400 });
    expect(keyPieces(classifyGeminiError(statusEcho, { secrets: [KEY] }).message)).toEqual([]);
    const network = classifyGeminiError(new TypeError(`fetch failed for ?key=${encodeURIComponent(KEY)}`), { secrets: [KEY] });
    expect(network.errorClass).toBe('network');
    expect(keyPieces(network.message)).toEqual([]);
    const clean = new TypeError('fetch failed');
    expect(classifyGeminiError(clean, { secrets: [KEY] }).cause).toBe(clean);
  });
});
