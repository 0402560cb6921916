import { JobNotFoundError, getJobSpec, retryTransient, type Database, type StoredJobSpec } from '../db/index.js';
import type { SpecProblem } from '../domain/job-spec.js';

/**
 * Who asks, as the service's token says: the user it acts as (null: an admin token that
 * names no user) and whether it is an admin's (an admin may act for any user).
 */
export interface Caller {
  readonly userId: string | null;
  readonly admin: boolean;
  /** Set for a page session opened by a link: the one job it may see (any other reads as not found). */
  readonly jobScope?: string | null;
}

/** A request the use case refuses as it stands, field by field (`invalid_input`). */
export class InvalidInputError extends Error {
  override readonly name = 'InvalidInputError';
  constructor(readonly problems: readonly SpecProblem[]) {
    super(problems.map((p) => `${p.field}: ${p.rule}`).join('; '));
  }
}

/** Something only an admin may do. */
export class AdminOnlyError extends Error {
  override readonly name = 'AdminOnlyError';
  constructor(what: string) {
    super(`${what} needs an admin token`);
  }
}

/**
 * The user a caller acts for: the caller's own, or, for an admin only, `named`.
 *
 * @throws {InvalidInputError} a user token naming another user, or an admin token with no user of its own naming none.
 */
export function actingUser(caller: Caller, named: string | undefined, field = 'userId'): string {
  if (named !== undefined && named !== caller.userId) {
    if (!caller.admin) throw new InvalidInputError([{ field, rule: 'only an admin token may name another user; leave it out (the token says who)' }]);
    return named;
  }
  if (caller.userId === null) throw new InvalidInputError([{ field, rule: 'is required with an admin token that acts for no user of its own' }]);
  return caller.userId;
}

/**
 * The job `jobId` as `caller` may see it: its owner and spec. Another user's job is
 * {@link JobNotFoundError}, exactly as a job that does not exist: whether a job id is
 * taken is none of another user's business.
 */
export async function visibleJob(database: Database, caller: Caller, jobId: string): Promise<StoredJobSpec> {
  const stored = await retryTransient(() => getJobSpec(database, jobId));
  if (stored === null || (!caller.admin && stored.userId !== caller.userId)) throw new JobNotFoundError(jobId);
  if (caller.jobScope != null && caller.jobScope !== jobId) throw new JobNotFoundError(jobId);
  return stored;
}
