#!/usr/bin/env node
/** Entry point of the `imagegen` command; see src/cli/main.ts. */
import { EXIT, main } from './cli/main.js';
import { reportError } from './cli/failures.js';
import { beforeOwnDatabase, tuneOwnProcess } from './cli/own-process.js';

// Our own process: settings the library leaves to its host (see src/cli/own-process.ts).
tuneOwnProcess();

let answered = false;
// A command still waiting when nothing is left that could end its wait (an answer lost with
// no handle keeping the process alive) would end with code 0 and nothing printed: a silent
// success. It ends as an internal error instead, answered like any other (one line on
// stderr; with --json, the one error object on stdout). An explicit exit (a second Ctrl-C)
// keeps its own code.
process.on('exit', (code) => {
  if (answered || code !== 0) return;
  process.exitCode = reportError(new Error('the command ended before it answered: it was waiting for work that nothing could finish any more'), {
    json: process.argv.includes('--json'),
    debug: false,
    storage: undefined,
  });
});

main(process.argv.slice(2), undefined, { beforeDatabase: beforeOwnDatabase }).then(
  (code) => {
    answered = true;
    process.exitCode = code;
    // Everything is closed by now; a stray handle must not keep a finished command alive.
    setTimeout(() => process.exit(code), 3000).unref();
  },
  (error: unknown) => {
    answered = true;
    process.stderr.write(`imagegen: ${String(error)}\n`);
    process.exitCode = EXIT.short;
  },
);
