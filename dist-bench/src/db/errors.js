/**
 * Errors the database layer throws on purpose. Each one is a refusal the caller
 * can act on (show the user, stop the process); unexpected driver errors are
 * passed through unchanged.
 */
/** The user's spendable balance cannot cover the job's full price; nothing was written. */
export class InsufficientCreditsError extends Error {
    name = 'InsufficientCreditsError';
    userId;
    /** Credits the job needs (price per image x total images). */
    required;
    /** Spendable credits the user had at the time of the check. */
    available;
    constructor(userId, required, available) {
        super(`user ${userId} needs ${required} credits for this job but has ${available} available`);
        this.userId = userId;
        this.required = required;
        this.available = available;
    }
}
/** A stage's input attachment is missing, unknown, or belongs to another user. */
export class InputAttachmentError extends Error {
    name = 'InputAttachmentError';
    /** Spec field at fault, e.g. `stages[1].mergedImageAttachId`. */
    field;
    attachId;
    constructor(field, attachId, rule) {
        super(`${field}: ${rule}`);
        this.field = field;
        this.attachId = attachId;
    }
}
/** A job id is already taken by another user. */
export class JobOwnershipError extends Error {
    name = 'JobOwnershipError';
    jobId;
    userId;
    constructor(jobId, userId) {
        super(`job ${jobId} belongs to another user than ${userId}`);
        this.jobId = jobId;
        this.userId = userId;
    }
}
/** An operation named a job that does not exist. */
export class JobNotFoundError extends Error {
    name = 'JobNotFoundError';
    jobId;
    constructor(jobId) {
        super(`job ${jobId} does not exist`);
        this.jobId = jobId;
    }
}
/** A request contradicts the job's stored state (slot out of range, job already finished, ...). */
export class JobStateError extends Error {
    name = 'JobStateError';
    jobId;
    constructor(jobId, message) {
        super(`job ${jobId}: ${message}`);
        this.jobId = jobId;
    }
}
/**
 * A migration failed; its transaction was rolled back. The process must not
 * start on a schema it does not know.
 */
export class MigrationError extends Error {
    name = 'MigrationError';
    /** The migration that failed, when known. */
    migration;
    constructor(migration, cause) {
        const reason = cause instanceof Error ? cause.message : String(cause);
        super(migration === null
            ? `database migrations could not run: ${reason}`
            : `database migration "${migration}" failed and was rolled back: ${reason}`, { cause });
        this.migration = migration;
    }
}
