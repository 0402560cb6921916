/**
 * Errors the database layer throws on purpose. Each one is a refusal the caller
 * can act on (show the user, stop the process); unexpected driver errors are
 * passed through unchanged.
 */

/** The user's spendable balance cannot cover the job's full price; nothing was written. */
export class InsufficientCreditsError extends Error {
  override readonly name = 'InsufficientCreditsError';
  readonly userId: string;
  /** Credits the job needs (price per image x total images). */
  readonly required: number;
  /** Spendable credits the user had at the time of the check. */
  readonly available: number;

  constructor(userId: string, required: number, available: number) {
    super(`user ${userId} needs ${required} credits for this job but has ${available} available`);
    this.userId = userId;
    this.required = required;
    this.available = available;
  }
}

/**
 * A grant would take what the user holds (balance + reserved) past the largest amount
 * credits can hold exactly (2^53-1); nothing was written.
 */
export class CreditOverflowError extends Error {
  override readonly name = 'CreditOverflowError';
  readonly userId: string;
  readonly amount: number;
  /** Balance + reserved at the time of the grant. */
  readonly held: number;
  readonly max: number;

  constructor(userId: string, amount: number, held: number, max: number) {
    super(`granting ${amount} credits to ${userId} would overflow: the user holds ${held} (balance + reserved) and at most ${max} fit`);
    this.userId = userId;
    this.amount = amount;
    this.held = held;
    this.max = max;
  }
}

/** A stage's input attachment is missing, unknown, or belongs to another user. */
export class InputAttachmentError extends Error {
  override readonly name = 'InputAttachmentError';
  /** Spec field at fault, e.g. `stages[1].mergedImageAttachId`. */
  readonly field: string;
  readonly attachId: string | null;

  constructor(field: string, attachId: string | null, rule: string) {
    super(`${field}: ${rule}`);
    this.field = field;
    this.attachId = attachId;
  }
}

/** A job id is already taken by another user. */
export class JobOwnershipError extends Error {
  override readonly name = 'JobOwnershipError';
  readonly jobId: string;
  readonly userId: string;

  constructor(jobId: string, userId: string) {
    super(`job ${jobId} belongs to another user than ${userId}`);
    this.jobId = jobId;
    this.userId = userId;
  }
}

/** An operation named a job that does not exist. */
export class JobNotFoundError extends Error {
  override readonly name = 'JobNotFoundError';
  readonly jobId: string;

  constructor(jobId: string) {
    super(`job ${jobId} does not exist`);
    this.jobId = jobId;
  }
}

/** A request contradicts the job's stored state (slot out of range, job already finished, ...). */
export class JobStateError extends Error {
  override readonly name = 'JobStateError';
  readonly jobId: string;

  constructor(jobId: string, message: string) {
    super(`job ${jobId}: ${message}`);
    this.jobId = jobId;
  }
}

/**
 * A migration failed; its transaction was rolled back. The process must not
 * start on a schema it does not know.
 */
export class MigrationError extends Error {
  override readonly name = 'MigrationError';
  /** The migration that failed, when known. */
  readonly migration: string | null;

  constructor(migration: string | null, cause: unknown) {
    const reason = cause instanceof Error ? cause.message : String(cause);
    super(
      migration === null
        ? `database migrations could not run: ${reason}`
        : `database migration "${migration}" failed and was rolled back: ${reason}`,
      { cause },
    );
    this.migration = migration;
  }
}

/** The job is being run by another live process (it holds the job's lease). */
export class JobLeasedError extends Error {
  override readonly name = 'JobLeasedError';
  constructor(
    readonly jobId: string,
    readonly owner: string,
  ) {
    super(`job ${jobId} is being run by ${owner}; try again when it stops (its lease expires if it died)`);
  }
}

/**
 * A delivery by a runner that no longer holds the job's lease (it stalled past the TTL and
 * another worker took the job over): refused, so a slot is only ever filled by the job's
 * current runner. Nothing was written.
 */
export class LeaseLostError extends Error {
  override readonly name = 'LeaseLostError';
  constructor(
    readonly jobId: string,
    readonly owner: string,
    readonly holder: string | null,
  ) {
    super(`job ${jobId} is no longer leased to ${owner} (now ${holder ?? 'nobody'}); its delivery is refused`);
  }
}

/**
 * A stored event of a job's log that does not check as a notified event (written by
 * another version of the code, or a bug). Refused, never skipped: the log promises a
 * reader every event, so one it cannot read stops it.
 */
export class InvalidJobEventError extends Error {
  override readonly name = 'InvalidJobEventError';
  constructor(
    readonly jobId: string,
    readonly seq: number,
    readonly type: string,
  ) {
    super(`event ${seq} (${type}) of job ${jobId} is not a valid event`);
  }
}

/** The embedded database is open in another live process (PGlite serves one process at a time). */
export class DataDirLockedError extends Error {
  override readonly name = 'DataDirLockedError';
  constructor(
    readonly lockFile: string,
    readonly pid: number,
  ) {
    super(
      `the embedded database is in use by process ${pid} (${lockFile}); PGlite serves one process at a time: ` +
        'wait for it, or set DATABASE_URL to share a PostgreSQL database between processes',
    );
  }
}
