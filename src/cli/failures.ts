/**
 * How a command that failed answers: every error mapped once to an exit code and to
 * the `--json` error object `{"error":{"code","message","problems"}}`.
 */
import { ConfigError } from '../config.js';
import {
  CreditOverflowError,
  DataDirLockedError,
  InputAttachmentError,
  InsufficientCreditsError,
  JobLeasedError,
  JobNotFoundError,
  JobOwnershipError,
  MigrationError,
  isConnectionError,
} from '../db/index.js';
import { PipelineError } from '../domain/error-class.js';
import { JobSpecError } from '../domain/job-spec.js';
import { JobSpecConflictError } from '../jobs/submit-job.js';

/** 0 completed; 1 ended short or could not run; 2 invalid input or configuration; 3 not enough credits. */
export const EXIT = Object.freeze({ completed: 0, short: 1, invalid: 2, credits: 3 });

/** An argument the user got wrong: the argument and the rule it broke. Exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
  constructor(
    readonly field: string,
    readonly rule: string,
  ) {
    super(`${field}: ${rule}`);
  }
}

/** Something outside this process cannot be used right now (database, storage, data folder, live events). Exit 1. */
export class UnavailableError extends Error {
  override readonly name = 'UnavailableError';
}

/** The `--json` error object: `{"error": Failure}`. */
export interface Failure {
  readonly code: 'invalid_input' | 'insufficient_credits' | 'busy' | 'unavailable' | 'internal';
  /** One line (a spec with several problems lists them on the following lines). */
  readonly message: string;
  /** What to fix, field by field; empty for busy, unavailable and internal. */
  readonly problems: readonly { readonly field: string; readonly rule: string; readonly message: string }[];
}

/** What the failing process was configured with, for hints that name the right settings. */
export interface FailureContext {
  readonly storage: 'folder' | 's3' | undefined;
}

const problem = (field: string, rule: string) => ({ field, rule, message: `${field}: ${rule}` });

/**
 * Maps an error to its exit code and error object. Refusals of the input name the
 * field and the rule (`invalid_input`, exit 2; `insufficient_credits`, exit 3);
 * operational failures say what to fix (`busy`: data folder locked or job leased;
 * `unavailable`: database, storage or data folder unusable; exit 1); anything else is
 * `internal` (exit 1).
 */
export function failureOf(error: unknown, context: FailureContext): { exitCode: number; failure: Failure } {
  const invalid = (message: string, problems: Failure['problems']) => ({ exitCode: EXIT.invalid, failure: { code: 'invalid_input' as const, message, problems } });
  const unavailable = (message: string) => ({ exitCode: EXIT.short, failure: { code: 'unavailable' as const, message, problems: [] } });
  if (error instanceof JobSpecError) return invalid(error.message, error.problems.map((p) => problem(p.field, p.rule)));
  if (error instanceof ConfigError) return invalid(error.message, [problem(error.variable, error.rule)]);
  if (error instanceof UsageError) return invalid(error.message, [problem(error.field, error.rule)]);
  if (error instanceof InputAttachmentError) return invalid(error.message, [problem(error.field, error.message.slice(error.field.length + 2))]);
  if (error instanceof JobOwnershipError) return invalid(error.message, [problem('jobId', `${error.jobId} belongs to another user than ${error.userId}`)]);
  if (error instanceof JobSpecConflictError) return invalid(error.message, [problem('jobId', `already names a different job (${error.field} differs)`)]);
  if (error instanceof CreditOverflowError) return invalid(error.message, [problem('<amount>', `would overflow: ${error.userId} holds ${error.held} credits and at most ${error.max} fit`)]);
  if (error instanceof JobNotFoundError) return invalid(error.message, [problem('<jobId>', `job ${error.jobId} does not exist`)]);
  if (error instanceof InsufficientCreditsError) {
    return {
      exitCode: EXIT.credits,
      failure: { code: 'insufficient_credits', message: `not enough credits: ${error.message}`, problems: [problem('credits', `user ${error.userId} needs ${error.required} credits, has ${error.available}`)] },
    };
  }
  if (error instanceof DataDirLockedError || error instanceof JobLeasedError) return { exitCode: EXIT.short, failure: { code: 'busy', message: error.message, problems: [] } };
  if (error instanceof UnavailableError || error instanceof MigrationError) return unavailable(error.message);
  if (error instanceof PipelineError && error.errorClass === 'storage') {
    const hint = context.storage === 's3' ? 'check S3_ENDPOINT, S3_BUCKET and the S3 credentials' : 'check that the data folder can be written';
    return unavailable(`storage is unavailable: ${error.message}; ${hint}`);
  }
  if (isConnectionError(error)) return unavailable(`database is unavailable: ${reasonOf(error)}; check that the server runs and that DATABASE_URL is right`);
  return { exitCode: EXIT.short, failure: { code: 'internal', message: `internal error: ${reasonOf(error)}`, problems: [] } };
}

/** The innermost useful text of an error (Node's AggregateError for a refused connection has an empty message). */
export function reasonOf(error: unknown): string {
  let e: unknown = error;
  while (e instanceof MigrationError && e.cause !== undefined) e = e.cause;
  if (e instanceof AggregateError && e.errors.length > 0) return reasonOf(e.errors[0]);
  if (e instanceof Error) return e.message || (e as NodeJS.ErrnoException).code || e.name;
  return String(e);
}

/** A database that cannot be opened, named by its URL without the password. */
export function databaseUnavailable(error: unknown, databaseUrl: string): UnavailableError {
  let shown = 'DATABASE_URL';
  try {
    const url = new URL(databaseUrl);
    url.password = '';
    shown = url.toString();
  } catch {
    // not a URL: name the variable only
  }
  return new UnavailableError(`database ${shown} is unavailable: ${reasonOf(error)}; check that the server runs and that DATABASE_URL is right`, { cause: error });
}

/**
 * Writes the failure: one line on stderr (a stack only when the log level is
 * `debug` or `trace`) and, with `--json`, the error object on stdout. Returns the
 * exit code.
 */
export function reportError(error: unknown, mode: { json: boolean; debug: boolean } & FailureContext): number {
  const { exitCode, failure } = failureOf(error, mode);
  const hint = failure.code === 'internal' && !mode.debug ? ' (IMAGEGEN_LOG_LEVEL=debug shows where)' : '';
  process.stderr.write(`imagegen: ${failure.message}${hint}\n`);
  if (error instanceof UsageError) process.stderr.write('imagegen --help lists the commands and their options\n');
  // A stack is for whoever debugs imagegen itself, not for an operational error.
  if (mode.debug && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
  if (mode.json) process.stdout.write(`${JSON.stringify({ error: failure })}\n`);
  return exitCode;
}
