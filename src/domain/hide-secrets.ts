import { inspect } from 'node:util';

/**
 * Gives an object that holds a secret (a config with an API key, a connection string
 * with a password) a printed form without it: `toJSON` (JSON.stringify, pino for a
 * logged field) and `[util.inspect.custom]` (console.log, util.inspect, even with
 * `showHidden`) both show `view()` instead of the object. Both are non-enumerable, so
 * `toEqual`, spreads and `Object.keys` see the object's data unchanged. Freezes and
 * returns `target`. pino logs a *merge object* (`logger.info(obj)`) key by key without
 * `toJSON`: a secret held directly as a string field needs {@link hideField} too.
 *
 * Code that reads the secret field by name still gets it: that is what it is for.
 *
 * @example
 * const gemini = withSecretsHidden('GeminiConfig', { apiKey, model }, () => ({ apiKey: apiKey ? '[redacted]' : undefined, model }));
 * console.log(gemini);          // GeminiConfig { apiKey: '[redacted]', model: '...' }
 * JSON.stringify({ gemini });   // {"gemini":{"apiKey":"[redacted]","model":"..."}}
 */
export function withSecretsHidden<T extends object>(name: string, target: T, view: () => unknown): Readonly<T> {
  return Object.freeze(withPrintedForm(name, target, view));
}

/**
 * {@link withSecretsHidden} without the freeze, for objects whose methods close over
 * the secret (a database's connection string) and whose fields others may replace.
 */
export function withPrintedForm<T extends object>(name: string, target: T, view: () => unknown): T {
  Object.defineProperty(target, 'toJSON', { value: view, enumerable: false, configurable: true });
  Object.defineProperty(target, inspect.custom, {
    value: (_depth: number, options: object) => `${name} ${inspect(view(), options)}`,
    enumerable: false,
    configurable: true,
  });
  return target;
}

/**
 * Turns `target[key]` into a non-enumerable property: still readable by name, but a
 * logger that walks the object's own keys (pino's merge object) never sees it.
 */
export function hideField<T extends object>(target: T, key: keyof T & string): T {
  Object.defineProperty(target, key, { value: target[key], enumerable: false });
  return target;
}

/** What a hidden secret prints as. */
export const REDACTED = '[redacted]';

/**
 * `postgres://user:secret@host/db?password=x` -> `postgres://user:redacted@host/db?password=redacted`;
 * anything unparsable -> `[redacted]` (it may be a secret in another shape).
 */
export function redactUrlPassword(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = 'redacted';
    if (parsed.searchParams.has('password')) parsed.searchParams.set('password', 'redacted');
    return parsed.toString();
  } catch {
    return REDACTED;
  }
}
