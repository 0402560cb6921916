import { ConfigError, loadConfig, type ConfigOverrides } from '../../src/config.js';

/** An environment as `loadConfig` reads it. */
export type Env = Record<string, string | undefined>;

/** The ConfigError `loadConfig` throws, or null when it accepts. */
export function refusal(env: Env, overrides: ConfigOverrides = {}): ConfigError | null {
  try {
    loadConfig(env, overrides);
    return null;
  } catch (error) {
    if (error instanceof ConfigError) return error;
    throw error;
  }
}
