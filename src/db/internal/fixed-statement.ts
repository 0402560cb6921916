import { CompiledQuery, sql, type Kysely, type QueryResult } from 'kysely';

/**
 * A statement whose text never changes, compiled once: each call binds its parameters
 * (`$1`, `$2`, ... in that order, each once) and runs it through kysely's executor without
 * building and compiling the query again. For the statements that run once per delivered
 * image (issue 16: the compile was about a tenth of a millisecond of the main thread per
 * image). A Kysely instance with plugins gets the statement as an `sql` template with the
 * same text and parameters, compiled as usual, so its plugins see it as they would.
 *
 * @example
 * const deliver = fixedStatement<{ outcome: string }>('select * from deliver_slot($1, $2)');
 * const { rows } = await deliver(db, [jobId, stageIndex]);
 */
export function fixedStatement<Row>(text: string): (db: Kysely<any>, parameters: readonly unknown[]) => Promise<QueryResult<Row>> {
  const parts = text.split(/\$(\d+)/);
  // The pieces of text between the placeholders, as a template's strings.
  const strings = parts.filter((_, i) => i % 2 === 0);
  const placeholders = parts.filter((_, i) => i % 2 === 1).map(Number);
  placeholders.forEach((n, i) => {
    if (n !== i + 1) throw new TypeError(`fixedStatement: placeholder $${n} where $${i + 1} was due (each of $1..$n once, in order)`);
  });
  const template = Object.assign([...strings], { raw: [...strings] }) as unknown as TemplateStringsArray;
  return (db, parameters) => {
    if (parameters.length !== placeholders.length) return Promise.reject(new TypeError(`fixedStatement: ${parameters.length} parameters for ${placeholders.length} placeholders`));
    if (db.getExecutor().plugins.length > 0) return sql<Row>(template, ...parameters).execute(db);
    return db.executeQuery<Row>(CompiledQuery.raw(text, [...parameters]));
  };
}
