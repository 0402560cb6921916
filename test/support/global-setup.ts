/** Says once, at the top of `npm test`, which database legs run and why. */
export default function setup(): void {
  const url = process.env['DATABASE_URL'];
  if (url) {
    console.log(`database legs: PGlite and PostgreSQL (DATABASE_URL=${url.replace(/\/\/[^@]*@/, '//***@')})`);
  } else {
    console.log(
      'database legs: PGlite only. The PostgreSQL leg is SKIPPED because DATABASE_URL is not set ' +
        '(set it to a PostgreSQL server, e.g. postgres://postgres@127.0.0.1:5432/postgres; .ci/run does).',
    );
  }
}
