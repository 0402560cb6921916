import { sql, type RawBuilder } from 'kysely';

/**
 * `now() + ms` as a database timestamp: leases and heartbeats are measured on the database's
 * clock, never a process's, so workers on hosts whose clocks disagree still agree on who is dead.
 */
export function dbTimeFromNow(ms: number): RawBuilder<Date> {
  return sql<Date>`now() + ${`${Math.ceil(ms)} milliseconds`}::interval`;
}

/** `now() - ms` on the database's clock (see {@link dbTimeFromNow}). */
export function dbTimeAgo(ms: number): RawBuilder<Date> {
  return sql<Date>`now() - ${`${Math.ceil(ms)} milliseconds`}::interval`;
}
