/**
 * The set-up every end-to-end CLI suite starts from, in one call: a temp workspace
 * (with the input image), a fake Gemini server, optionally a fresh PostgreSQL database,
 * the child environment pointing the CLI at them, and credits granted through
 * `imagegen credits grant`. `close()` undoes it all.
 *
 *   openCliSuite({ server, env, grants, postgres })
 *     --> [scratch database] --> workspace --> fake server --> cliEnv(...) --> credits grant...
 *   suite.run(args) / suite.start(args)   the CLI with the suite's env (override per call)
 *   suite.close()   kill live CLI processes --> close the server --> remove the workspace
 *                   --> drop the database (failing if a connection was left open)
 */
import { startFakeGeminiServer, type FakeGeminiServer, type FakeGeminiServerOptions } from './fake-gemini-server.js';
import { cliEntry, cliEnv, killLiveCliProcesses, runCli, startCli, type CliProcess, type CliResult, type RunCliOptions } from './cli.js';
import { createWorkspace, pgliteOf, type Workspace } from './cli-workspace.js';
import { createScratchDatabase, type ScratchDatabase } from './databases.js';
import type { DatabaseConfig } from '../../src/db/index.js';

export interface CliSuiteOptions {
  /** The fake Gemini server's options (latency, behaviour, hold). Default: its defaults. */
  readonly server?: FakeGeminiServerOptions;
  /** Variables on top of the data dir and the server's address and key (e.g. DATABASE_URL, budgets). */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Credits granted before the suite's tests, by user id. Default none. */
  readonly grants?: Readonly<Record<string, number>>;
  /** Run `dist/cli.js` (checked to be fresh) rather than a build of `src/`. Default true: these suites test the built CLI. */
  readonly built?: boolean;
  /**
   * Use a fresh PostgreSQL database (a scratch database on `DATABASE_URL`, dropped by
   * `close()`) instead of the data dir's PGlite; storage stays the workspace's folder.
   * Default false.
   */
  readonly postgres?: boolean;
}

/** Per call: another environment (default the suite's), cwd and timeout as `runCli` takes them. */
export type SuiteCliOptions = Partial<RunCliOptions>;

export interface CliSuite {
  readonly ws: Workspace;
  readonly server: FakeGeminiServer;
  /** The child environment: `IMAGEGEN_DATA_DIR` in the workspace, Gemini at the fake server, plus `env`. */
  readonly env: NodeJS.ProcessEnv;
  /** The database the CLI uses, for `readDb`: the scratch PostgreSQL database, or the data dir's PGlite. */
  readonly database: DatabaseConfig;
  /** `runCli` with the suite's build and environment. */
  run(args: readonly string[], options?: SuiteCliOptions): Promise<CliResult>;
  /** `startCli` with the suite's build and environment. */
  start(args: readonly string[], options?: SuiteCliOptions): Promise<CliProcess>;
  /** `imagegen credits grant <userId> <credits>`; throws with the CLI's stderr unless it exits 0. */
  grant(userId: string, credits: number, options?: SuiteCliOptions): Promise<void>;
  /** Kills CLI processes still running, closes the server, removes the workspace, drops the database. */
  close(): Promise<void>;
}

/**
 * Opens a CLI suite (call it in `beforeAll`, `close()` in `afterAll`). Fails before
 * starting anything when the built CLI is missing or stale.
 *
 * @example
 *   suite = await openCliSuite({ server: { latencyMs: 15 }, env: { IMAGEGEN_CONCURRENCY: '4' }, grants: { [USER]: 50 } });
 *   const run = await suite.run(['run', await suite.ws.writeJob('job.json', jobSpec(JOB, USER, [['a fox', 3]])), '--json']);
 */
export async function openCliSuite(options: CliSuiteOptions = {}): Promise<CliSuite> {
  const built = options.built ?? true;
  await cliEntry({ built });
  let scratch: ScratchDatabase | undefined;
  let ws: Workspace | undefined;
  let server: FakeGeminiServer | undefined;
  const undo = async (): Promise<void> => {
    await killLiveCliProcesses();
    await server?.close();
    await ws?.dispose();
    await scratch?.dispose();
  };
  try {
    scratch = options.postgres ? await createScratchDatabase('postgres') : undefined;
    const databaseUrl = scratch?.config.databaseUrl;
    ws = await createWorkspace();
    server = await startFakeGeminiServer(options.server);
    const env = cliEnv({
      ...(databaseUrl ? { DATABASE_URL: databaseUrl } : {}),
      IMAGEGEN_DATA_DIR: ws.dataDir,
      GEMINI_API_KEY: server.apiKey,
      GEMINI_BASE_URL: server.url,
      ...options.env,
    });
    const run = (args: readonly string[], o: SuiteCliOptions = {}) => runCli(args, { env, built, ...o });
    const suite: CliSuite = {
      ws,
      server,
      env,
      database: databaseUrl ? { databaseUrl } : pgliteOf(ws.dataDir),
      run,
      start: (args, o = {}) => startCli(args, { env, built, ...o }),
      async grant(userId, credits, o) {
        const grant = await run(['credits', 'grant', userId, String(credits)], o);
        if (grant.code !== 0) throw new Error(`credits grant ${userId} ${credits} exited ${grant.code ?? grant.signal}:\n${grant.stderr}`);
      },
      close: undo,
    };
    for (const [userId, credits] of Object.entries(options.grants ?? {})) await suite.grant(userId, credits);
    return suite;
  } catch (error) {
    await undo();
    throw error;
  }
}
