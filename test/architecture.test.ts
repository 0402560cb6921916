/**
 * The house rules of the layout, read from the source files themselves (docs/architecture.md,
 * issue 11 "Done when"):
 *
 * - `db-boundary`: code outside `src/db` imports the database through `src/db/index.ts`
 *   only, never `db/ops/*`, `db/internal/*`, `db/database.js`, `db/errors.js`, ...;
 * - `kysely`: no `kysely` (or `kysely-*`) import outside `src/db`;
 * - `raw-query`: no query builder call (`selectFrom`, `insertInto`, `updateTable`,
 *   `deleteFrom`, `db.transaction`) outside `src/db`: queries are db ops;
 * - `process-env`: no `process.env` outside `src/config.ts`, the one reader of the environment.
 *
 * There are no exceptions: a file that breaks a rule fails the test, named.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, posix, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

type Rule = 'db-boundary' | 'kysely' | 'raw-query' | 'process-env';
const RULES: readonly Rule[] = ['db-boundary', 'kysely', 'raw-query', 'process-env'];

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

/** Every `.ts` file under `src/`, as a repository-relative posix path. */
function sourceFiles(): string[] {
  return (readdirSync(join(ROOT, 'src'), { recursive: true }) as string[])
    .filter((file) => file.endsWith('.ts'))
    .map((file) => posix.join('src', file.split(sep).join('/')))
    .sort();
}

/** Module specifiers of static imports, re-exports and dynamic `import()`s. */
function importSpecifiers(source: string): string[] {
  const pattern = /(?:\bfrom\s*|\bimport\s*\(\s*|\bimport\s+)(['"])([^'"\n]+)\1/g;
  return [...source.matchAll(pattern)].map((match) => match[2] as string);
}

/** The source without comments, so a doc comment naming `process.env` is not a read of it. */
function withoutComments(source: string): string {
  return source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
}

/** The rules `file` (repository-relative) with contents `source` breaks. */
function violations(file: string, source: string): Rule[] {
  const broken = new Set<Rule>();
  const inDb = file.startsWith('src/db/');
  for (const specifier of importSpecifiers(source)) {
    if (!inDb && /^kysely($|[/-])/.test(specifier)) broken.add('kysely');
    if (!inDb && specifier.startsWith('.')) {
      const target = posix.normalize(posix.join(posix.dirname(file), specifier));
      if (target.startsWith('src/db/') && target !== 'src/db/index.js') broken.add('db-boundary');
    }
  }
  const code = withoutComments(source);
  if (!inDb && /\.(selectFrom|insertInto|updateTable|deleteFrom)\s*\(|\.db\s*\.\s*transaction\s*\(/.test(code)) broken.add('raw-query');
  if (file !== 'src/config.ts' && /\bprocess\s*\.\s*env\b|\bprocess\s*\[\s*['"]env['"]\s*\]/.test(code)) broken.add('process-env');
  return [...broken];
}

describe('the rule checker (so the layout test can fail)', () => {
  it.each<[string, string, string, Rule[]]>([
    ['a deep op import', 'src/cli/x.ts', "import { grantCredits } from '../db/ops/grant-credits.js';", ['db-boundary']],
    ['a type-only deep import', 'src/sinks/x.ts', "import type { Database } from '../db/database.js';", ['db-boundary']],
    ['a dynamic deep import', 'src/x.ts', "const m = await import('./db/internal/json.js');", ['db-boundary']],
    ['a re-export of a deep path', 'src/x.ts', "export { jsonb } from './db/internal/json.js';", ['db-boundary']],
    ['the door itself', 'src/cli/x.ts', "import { grantCredits, type Database } from '../db/index.js';", []],
    ['deep paths inside src/db', 'src/db/ops/x.ts', "import { jsonb } from '../internal/json.js';\nimport { sql } from 'kysely';", []],
    ['kysely outside src/db', 'src/streams/x.ts', "import { sql } from 'kysely';", ['kysely']],
    ['a kysely dialect outside src/db', 'src/x.ts', "import { PGliteDialect } from 'kysely-pglite-dialect';", ['kysely']],
    ['a raw query outside src/db', 'src/sources/x.ts', "const rows = await database.db.selectFrom('jobs').selectAll().execute();", ['raw-query']],
    ['a transaction outside src/db', 'src/jobs/x.ts', "await database.db.transaction().execute(async () => {});", ['raw-query']],
    ['process.env outside config.ts', 'src/demo.ts', "const dir = process.env['IMAGEGEN_DATA_DIR'];", ['process-env']],
    ['process.env in config.ts', 'src/config.ts', 'export const env = process.env;', []],
    ['process.env named in a comment', 'src/x.ts', '/** Reads nothing from `process.env`. */\n// nor process.env here\nexport {};', []],
  ])('%s', (_what, file, source, expected) => {
    expect(violations(file, source)).toEqual(expected);
  });
});

describe('the layout of src/', () => {
  const files = sourceFiles();
  const found = new Map<Rule, string[]>(RULES.map((rule) => [rule, []]));
  for (const file of files) {
    for (const rule of violations(file, readFileSync(join(ROOT, file), 'utf8'))) found.get(rule)?.push(file);
  }

  it('reads the source tree (the door of the database layer is there)', () => {
    expect(files).toContain('src/db/index.ts');
    expect(files).toContain('src/config.ts');
    expect(files.length).toBeGreaterThan(50);
  });

  it.each(RULES)('%s: no file in src/ breaks it', (rule) => {
    expect(found.get(rule) ?? [], `files that break ${rule}`).toEqual([]);
  });
});
