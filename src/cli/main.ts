/**
 * The `imagegen` command line. Exit codes: 0 completed; 1 ended short (partial,
 * failed, cancelled) or could not run (busy, database or storage unavailable);
 * 2 invalid input or configuration (nothing written, no provider call); 3 not
 * enough credits (nothing generated).
 *
 * With `--json`, stdout holds exactly one JSON object on every exit path: the
 * command's answer, or `{"error":{"code","message","problems"}}` (see `failures.ts`).
 */
import { parseArgs } from 'node:util';
import { loadConfig, type ConfigEnv, type ConfigOverrides, type PipelineConfig } from '../config.js';
import type { Pipeline } from '../pipeline.js';
import { reportError, UsageError } from './failures.js';
import { type Invocation, type Values, checkDataDir, USAGE, OPTIONS, PACKAGE_NAME, packageVersion, resolveCommand } from './invocation.js';
import { HANDLERS } from './commands.js';

export { EXIT } from './failures.js';
export { EMBEDDED_WATCH_MESSAGE } from './commands.js';

/** What a caller of {@link main} in the same process may lend the commands. */
export interface MainHooks {
  /**
   * Opens a command's pipeline instead of `openPipeline`: `npm run demo` runs `credits grant`
   * then `run` on one pipeline it keeps open (one embedded database start, not two).
   */
  readonly openPipeline?: ((config: PipelineConfig) => Promise<Pipeline>) | undefined;
  /** Called just before a command opens its database (see {@link Invocation.beforeDatabase}). */
  readonly beforeDatabase?: Invocation['beforeDatabase'];
}

/**
 * Runs the CLI with `argv` (without node and the script) and returns the exit code.
 * `env` is the environment `loadConfig` reads (default: the process environment; `npm run demo` gives its presets).
 */
export async function main(argv: readonly string[], env?: ConfigEnv, hooks: MainHooks = {}): Promise<number> {
  // Known before parsing, so even an unparsable command line answers in JSON when asked to.
  let json = argv.includes('--json');
  let debug = false;
  let storage: 'folder' | 's3' | undefined;
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: [...argv], options: OPTIONS, allowPositionals: true, strict: true });
    } catch (error) {
      throw new UsageError('(arguments)', (error as Error).message);
    }
    const values = parsed.values as Values;
    json = Boolean(values.json);
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    if (values.version) {
      if (parsed.positionals.length > 0) throw new UsageError('--version', 'takes no command: imagegen --version [--json]');
      const version = packageVersion();
      process.stdout.write(json ? `${JSON.stringify({ name: PACKAGE_NAME, version })}\n` : `${version}\n`);
      return 0;
    }
    const { name, args } = resolveCommand(parsed.positionals, values);
    const overrides: ConfigOverrides = {
      dataDir: values['data-dir'],
      provider: values.provider,
      concurrency: values.concurrency,
      metricsPort: values['metrics-port'],
      metricsHost: values['metrics-host'],
      httpPort: values.port,
      httpHost: values.host,
    };
    const config = loadConfig(env, overrides);
    debug = config.logLevel === 'debug' || config.logLevel === 'trace';
    storage = config.storage.kind;
    checkDataDir(config, values);
    return await (HANDLERS[name] as (inv: Invocation) => Promise<number>)({ args, values, config, json, openPipeline: hooks.openPipeline, beforeDatabase: hooks.beforeDatabase });
  } catch (error) {
    return reportError(error, { json, debug, storage });
  }
}

