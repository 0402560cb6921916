/** SQLSTATE 23505. Both `pg` and PGlite put the SQLSTATE in `error.code`. */
export function isUniqueViolation(error: unknown, constraint?: string): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const { code, constraint: name } = error as { code?: unknown; constraint?: unknown };
  return code === '23505' && (constraint === undefined || name === constraint);
}

/** SQLSTATE classes and socket codes that mean "the connection went away", not "the query is wrong". */
const CONNECTION_CODES = new Set(['57P01', '57P02', '57P03', '08000', '08001', '08003', '08004', '08006', '40001', '40P01', 'ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT']);

/** Whether a database error is worth running the same (idempotent) operation again. */
export function isTransientDatabaseError(error: unknown): boolean {
  if (typeof error !== 'object' || error === null) return false;
  const { code, message } = error as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && CONNECTION_CODES.has(code)) return true;
  // pg's own words: a client whose socket broke ("... is not queryable"), a pool that could not connect in time.
  return typeof message === 'string' && /Connection terminated|connection.*(closed|ended|lost)|terminating connection|connection error and is not queryable|timeout exceeded when trying to connect/i.test(message);
}

/**
 * Runs an idempotent database operation, again after a short pause when the
 * connection was lost (a failover, `pg_terminate_backend`): up to `attempts` tries.
 * Everything else fails at once.
 */
export async function retryTransient<T>(operation: () => Promise<T>, attempts = 5, pauseMs = 200): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation();
    } catch (error) {
      if (attempt >= attempts || !isTransientDatabaseError(error)) throw error;
      await new Promise((resolve) => setTimeout(resolve, pauseMs * attempt));
    }
  }
}

/**
 * Whether `error` (or a cause of it) says "the database cannot be reached or refuses us":
 * socket codes, SQLSTATE classes 08 (connection), 28 (authorization), 3D (no such
 * database), 53 (resources), 57P (shutdown), or a lost connection's message. What the CLI
 * exits 1 on and the service answers 503 for; wider than {@link isTransientDatabaseError},
 * which is only what is worth retrying.
 */
export function isConnectionError(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === 'string' && (/^E(CONNREFUSED|CONNRESET|NOTFOUND|AI_AGAIN|TIMEDOUT|HOSTUNREACH|NETUNREACH|PIPE)$/.test(code) || /^(08|28|3D|53|57P)/.test(code))) return true;
    if (e instanceof AggregateError && e.errors.some(isConnectionError)) return true;
    const message = (e as { message?: unknown }).message;
    if (typeof message === 'string' && /Connection terminated|connection.*(closed|ended|lost)|terminating connection/i.test(message)) return true;
  }
  return false;
}
