/**
 * Removes secrets (the API key) from text a server controls before it is stored,
 * logged or published: masked first, then cut, so a cut can never leave a piece of
 * a secret behind.
 */

/** What a masked secret becomes. */
export const SECRET_MASK = '***';

/**
 * Pieces of a secret at least this long are masked too (a server that echoes a key
 * truncated, or a key cut at a message limit). Shorter pieces carry too little of a
 * random key to matter and would mask ordinary words.
 */
export const MIN_SECRET_FRAGMENT = 8;

/**
 * Returns `text` with every secret masked, cut to `maxChars` (then `...` is appended).
 *
 * Masked, in this order, so that the cut comes last:
 * 1. every occurrence of each secret, in any letter case (`KEY`, `key`), raw or
 *    URL-encoded (`encodeURIComponent`, any hex case);
 * 2. every run of {@link MIN_SECRET_FRAGMENT}+ characters that is a piece of one of
 *    those forms (a prefix left by a server's own cut, or an echo of part of the key).
 *
 * Empty secrets are ignored. Linear in `text` for step 1; step 2 runs on the part
 * that survives the cut only, so a huge error body costs no more than a short one.
 *
 * @example
 * maskSecrets(`bad key ${key}`, [key])            // 'bad key ***'
 * maskSecrets('x'.repeat(290) + key, [key], 300)  // 'xxx...xxx***' (never 10 characters of the key)
 */
export function maskSecrets(text: string, secrets: readonly string[], maxChars = Number.POSITIVE_INFINITY): string {
  const forms = secretForms(secrets);
  let masked = text;
  for (const form of forms) masked = masked.replace(new RegExp(escapeRegExp(form), 'gi'), SECRET_MASK);
  // Only what can survive the cut needs the fragment scan (plus a secret's length, so
  // a fragment that straddles the cut is seen whole).
  const longest = forms.reduce((max, f) => Math.max(max, f.length), 0);
  if (masked.length > maxChars + longest) masked = masked.slice(0, maxChars + longest);
  masked = maskFragments(masked, forms);
  return masked.length > maxChars ? `${masked.slice(0, maxChars)}...` : masked;
}

/** Each secret as it may appear in text: raw and URL-encoded (matched in any case), longest first. */
function secretForms(secrets: readonly string[]): string[] {
  const forms = new Set<string>();
  for (const secret of secrets) {
    if (secret === '') continue;
    forms.add(secret);
    forms.add(encodeURIComponent(secret));
  }
  return [...forms].sort((a, b) => b.length - a.length);
}

/** Masks runs of {@link MIN_SECRET_FRAGMENT}+ characters that occur inside a form (ASCII case-insensitive). */
function maskFragments(text: string, forms: readonly string[]): string {
  const haystacks = forms.filter((f) => f.length >= MIN_SECRET_FRAGMENT).map(asciiLower);
  if (haystacks.length === 0) return text;
  const lower = asciiLower(text);
  let out = '';
  let i = 0;
  while (i < lower.length) {
    let longest = 0;
    for (const h of haystacks) {
      let length = MIN_SECRET_FRAGMENT;
      while (i + length <= lower.length && length <= h.length && h.includes(lower.slice(i, i + length))) length++;
      longest = Math.max(longest, length - 1);
    }
    if (longest >= MIN_SECRET_FRAGMENT) {
      out += SECRET_MASK;
      i += longest;
    } else {
      out += text[i];
      i++;
    }
  }
  return out;
}

/** Lower-cases A-Z only, so indices stay aligned with the original text. */
function asciiLower(text: string): string {
  return text.replace(/[A-Z]/g, (c) => String.fromCharCode(c.charCodeAt(0) + 32));
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
