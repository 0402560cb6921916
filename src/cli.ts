#!/usr/bin/env node
/** Entry point of the `imagegen` command; see src/cli/main.ts. */
import { turnSharpOperationCacheOff } from './adapters/image-codec.js';
import { EXIT, main } from './cli/main.js';

// Our own process: every image is converted once (see turnSharpOperationCacheOff).
turnSharpOperationCacheOff();

main(process.argv.slice(2)).then(
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
