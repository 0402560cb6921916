#!/usr/bin/env node
/** Entry point of the `imagegen` command; see src/cli/main.ts. */
import { EXIT, main } from './cli/main.js';
import { beforeOwnDatabase, tuneOwnProcess } from './cli/own-process.js';

// Our own process: settings the library leaves to its host (see src/cli/own-process.ts).
tuneOwnProcess();

main(process.argv.slice(2), undefined, { beforeDatabase: beforeOwnDatabase }).then(
  (code) => {
    process.exitCode = code;
    // Everything is closed by now; a stray handle must not keep a finished command alive.
    setTimeout(() => process.exit(code), 3000).unref();
  },
  (error: unknown) => {
    process.stderr.write(`imagegen: ${String(error)}\n`);
    process.exitCode = EXIT.short;
  },
);
