/** `sharingListens`: many listeners of a channel, one LISTEN (on PostgreSQL, one connection), on PGlite and PostgreSQL. */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { sharingListens } from '../../src/sources/shared-listens.js';
import { forEachDatabase } from '../support/databases.js';

/** A promise of the next payload a listener hears, and the listener. */
function inbox() {
  const heard: string[] = [];
  const waiters: (() => void)[] = [];
  return {
    heard,
    onPayload: (payload: string) => {
      heard.push(payload);
      for (const wake of waiters.splice(0)) wake();
    },
    async until(count: number) {
      while (heard.length < count) await new Promise<void>((resolve) => waiters.push(resolve));
    },
  };
}

forEachDatabase('sharingListens', (ctx) => {
  it('hands every payload to every listener of the channel, and none to one that left', async () => {
    const shared = sharingListens(ctx.database);
    const [a, b] = [inbox(), inbox()];
    const stopA = await shared.listen('shared_t1', a.onPayload);
    const stopB = await shared.listen('shared_t1', b.onPayload);
    await ctx.database.notify('shared_t1', 'one');
    await Promise.all([a.until(1), b.until(1)]);
    await stopA();
    await ctx.database.notify('shared_t1', 'two');
    await b.until(2);
    expect(a.heard).toEqual(['one']);
    expect(b.heard).toEqual(['one', 'two']);
    await stopB();
    // A new listener after everyone left starts afresh.
    const c = inbox();
    const stopC = await shared.listen('shared_t1', c.onPayload);
    await ctx.database.notify('shared_t1', 'three');
    await c.until(1);
    expect(c.heard).toEqual(['three']);
    await stopC();
  });

  // Connections are a PostgreSQL matter (PGlite has no LISTEN connections to count): declared for that leg only, not skipped on the other.
  if (ctx.kind === 'postgres') describe('on PostgreSQL', () => {
    it('holds one LISTEN connection however many listen, and none once all left', async () => {
      const url = ctx.config.databaseUrl as string;
      const listening = async (): Promise<number> => {
        const admin = new pg.Client({ connectionString: url });
        await admin.connect();
        try {
          const { rows } = await admin.query<{ n: number }>("select count(*)::int as n from pg_stat_activity where datname = current_database() and query ilike 'listen %shared_t2%'");
          return rows[0]?.n ?? 0;
        } finally {
          await admin.end();
        }
      };
      const shared = sharingListens(ctx.database);
      const stops = await Promise.all(Array.from({ length: 5 }, () => shared.listen('shared_t2', () => {})));
      expect(await listening()).toBe(1);
      for (const stop of stops) await stop();
      expect(await listening()).toBe(0);
    });
  });
});
