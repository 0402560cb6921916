#!/usr/bin/env node
/** Entry point of the `imagegen` command; see src/cli/main.ts. */
import { EXIT, main } from './cli/main.js';
main(process.argv.slice(2)).then((code) => {
    process.exitCode = code;
    // Everything is closed by now; a stray handle must not keep a finished command alive.
    setTimeout(() => process.exit(code), 3000).unref();
}, (error) => {
    process.stderr.write(`imagegen: ${String(error)}\n`);
    process.exitCode = EXIT.short;
});
