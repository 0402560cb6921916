/**
 * `fixedStatement`: a statement compiled once, run with new parameters each call. Without
 * plugins it skips kysely's compile; with plugins it runs as an `sql` template of the same
 * text, so they see it. Both give the same rows, on both databases; a text whose placeholders
 * are not $1..$n in order, or a call with the wrong number of parameters, is refused.
 */
import { expect, it } from 'vitest';
import { fixedStatement } from '../../src/db/internal/fixed-statement.js';
import { forEachDatabase } from '../support/databases.js';
import { Statements } from '../support/statements.js';

it('refuses placeholders that are not $1..$n, each once, in order', () => {
  expect(() => fixedStatement('select $2::int')).toThrow(/placeholder \$2 where \$1 was due/);
  expect(() => fixedStatement('select $1::int, $1::int')).toThrow(/placeholder \$1 where \$2 was due/);
  expect(() => fixedStatement('select $1::int, $3::int')).toThrow(/placeholder \$3 where \$2 was due/);
});

forEachDatabase('fixedStatement', (ctx) => {
  const db = () => ctx.database.db;
  const pair = fixedStatement<{ a: number; b: string; j: unknown }>(`select $1::int + 1 as a, $2::text || '!' as b, cast(cast($3 as text) as jsonb) as j`);

  it('binds its parameters in order, without plugins and with them (which then see the statement)', async () => {
    const plain = await pair(db(), [41, 'hi', JSON.stringify({ k: [1, 'x'] })]);
    expect(plain.rows).toEqual([{ a: 42, b: 'hi!', j: { k: [1, 'x'] } }]);
    const statements = new Statements();
    const watched = await pair(db().withPlugin(statements), [1, 'yo', JSON.stringify(null)]);
    expect(watched.rows).toEqual([{ a: 2, b: 'yo!', j: null }]);
    expect(statements.count).toBe(1);
  });

  it('refuses a call with the wrong number of parameters, running nothing', async () => {
    const statements = new Statements();
    await expect(pair(db(), [1, 'x'])).rejects.toThrow('2 parameters for 3 placeholders');
    await expect(pair(db().withPlugin(statements), [1, 'x', '{}', 4])).rejects.toThrow('4 parameters for 3 placeholders');
    expect(statements.count).toBe(0);
  });
});
