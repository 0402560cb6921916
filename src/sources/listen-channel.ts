import { Observable } from 'rxjs';
import type { Database } from '../db/index.js';

/** What {@link listenChannel} emits: `listening` once, when LISTEN is in place, and each payload heard. */
export type Heard = { readonly type: 'listening' } | { readonly type: 'payload'; readonly payload: string };

/**
 * LISTENs on `channel` while subscribed: emits `listening` once the LISTEN is in place
 * (a read started after it misses no notification committed after the read), then
 * every payload as delivered. Never completes on its own; errors when LISTEN fails.
 *
 * Cold: each subscription has its own listener (PostgreSQL: its own connection),
 * stopped on unsubscribe; a failure to stop is dropped (nobody is listening any more).
 *
 * ```
 * db:      (LISTEN) ------ p1 ---- p2 ---
 * output:  ---------L ---- p1 ---- p2 ---     L = { type: 'listening' }
 * ```
 */
export function listenChannel(database: Pick<Database, 'listen'>, channel: string): Observable<Heard> {
  return new Observable<Heard>((subscriber) => {
    let stop: (() => Promise<void>) | null = null;
    let closed = false;
    database.listen(channel, (payload) => subscriber.next({ type: 'payload', payload })).then(
      (unlisten) => {
        if (closed) {
          void unlisten().catch(() => {});
          return;
        }
        stop = unlisten;
        subscriber.next({ type: 'listening' });
      },
      (error: unknown) => subscriber.error(error),
    );
    return () => {
      closed = true;
      const unlisten = stop;
      stop = null;
      if (unlisten) void unlisten().catch(() => {});
    };
  });
}
