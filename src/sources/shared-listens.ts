import type { Database } from '../db/index.js';
import { withPrintedForm } from '../domain/hide-secrets.js';

/**
 * A view of `database` whose `listen` shares one LISTEN per channel among its callers:
 * the first caller of a channel starts it, the others join it (they resolve once it is in
 * place, so "a read after `listen` resolves misses no notification committed after the
 * read" still holds), and the last to leave stops it. Everything else is `database`'s own.
 *
 * Why: on PostgreSQL every LISTEN holds a connection of its own, and the service follows
 * one job per open event stream (`followJobEvents` listens on the job events channel):
 * 200 clients would be 200 connections, past PostgreSQL's default `max_connections`
 * (100). Shared, the whole process holds one. A payload is handed to every listener of
 * the channel; each filters its job.
 *
 * @example
 * const shared = sharingListens(pipeline.database);
 * followJobEvents(shared, jobId, { afterSeq });   // any number of them: one LISTEN
 */
export function sharingListens(database: Database): Database {
  interface Shared {
    readonly handlers: Set<(payload: string) => void>;
    readonly ready: Promise<() => Promise<void>>;
  }
  const channels = new Map<string, Shared>();

  const listen = async (channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>> => {
    let shared = channels.get(channel);
    if (shared === undefined) {
      const handlers = new Set<(payload: string) => void>();
      const ready = database.listen(channel, (payload) => {
        for (const handler of [...handlers]) handler(payload);
      });
      const created: Shared = { handlers, ready };
      channels.set(channel, created);
      // A LISTEN that failed is forgotten: the next caller tries again.
      ready.catch(() => {
        if (channels.get(channel) === created) channels.delete(channel);
      });
      shared = created;
    }
    const joined = shared;
    joined.handlers.add(onPayload);
    try {
      await joined.ready;
    } catch (error) {
      joined.handlers.delete(onPayload);
      throw error;
    }
    let left = false;
    return async () => {
      if (left) return;
      left = true;
      joined.handlers.delete(onPayload);
      if (joined.handlers.size > 0 || channels.get(channel) !== joined) return;
      // Forgotten before it stops: a caller arriving meanwhile starts a LISTEN of its own.
      channels.delete(channel);
      await (await joined.ready)();
    };
  };

  return withPrintedForm('Database', { db: database.db, kind: database.kind, notify: (channel: string, payload: string) => database.notify(channel, payload), listen, close: () => database.close() }, () => database);
}
