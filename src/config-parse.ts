/**
 * How `loadConfig` (src/config.ts) reads one environment variable or flag: an integer
 * in a range, a fraction, a boolean. Unset or empty is `undefined` (the caller's
 * default applies); a value outside the rule is a {@link ConfigError} naming the
 * variable and quoting the value, so the CLI can exit 2 with one line saying what to fix.
 */

/** Environment variables by name, as the process environment holds them. */
export type ConfigEnv = Readonly<Record<string, string | undefined>>;

/** A bad environment variable or flag: names it and the rule. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    readonly variable: string,
    readonly rule: string,
  ) {
    super(`${variable}: ${rule}`);
  }
}

/** The integer `env[name]` in `min..max`; undefined when unset or empty. */
export function intOf(env: ConfigEnv, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min || value > max) throw new ConfigError(name, `must be an integer in ${min}..${max}, got ${JSON.stringify(raw)}`);
  return value;
}

/** The number `env[name]` in `0..1`; undefined when unset or empty. */
export function fractionOf(env: ConfigEnv, name: string): number | undefined {
  const raw = env[name];
  if (raw === undefined || raw === '') return undefined;
  const value = Number(raw);
  if (!(value >= 0 && value <= 1)) throw new ConfigError(name, `must be a number in 0..1, got ${JSON.stringify(raw)}`);
  return value;
}

/** `env[name]` as a boolean (`1`/`true`/`yes`, `0`/`false`/`no`, any case); `fallback` when unset or empty. */
export function boolOf(env: ConfigEnv, name: string, fallback: boolean): boolean {
  const raw = env[name]?.toLowerCase();
  if (raw === undefined || raw === '') return fallback;
  if (['1', 'true', 'yes'].includes(raw)) return true;
  if (['0', 'false', 'no'].includes(raw)) return false;
  throw new ConfigError(name, `must be true or false, got ${JSON.stringify(env[name])}`);
}
