/**
 * Diagnostic only (BENCH_TRACE_SQL=1): finds a PGlite statement that never returns.
 * Before PGlite executes a protocol message its bytes are copied into shared memory;
 * a watchdog thread prints the message when the main thread has been stuck inside
 * one call for 5 s (the event loop is blocked then, so it cannot report itself).
 */
import { Worker } from 'node:worker_threads';
import { PGlite } from '@electric-sql/pglite';

if (process.env['BENCH_TRACE_SQL'] === '1') {
  const SIZE = 16 * 1024;
  const SLOTS = 4;
  const shared = new SharedArrayBuffer(16 + SLOTS * 4 + SLOTS * SIZE);
  const header = new Int32Array(shared, 0, 4 + SLOTS); // [calls, inside (0/1), -, -, length per slot]
  void 0;
  // PGlite's internal method; typed loosely on purpose (diagnostic patch).
  const proto = PGlite.prototype as unknown as { execProtocolRawSync: (message: Uint8Array, ...rest: unknown[]) => unknown };
  const original = proto.execProtocolRawSync;
  proto.execProtocolRawSync = function (this: unknown, message: Uint8Array, ...rest: unknown[]) {
    const length = Math.min(message.byteLength, SIZE);
    const slot = (Atomics.load(header, 0) + 1) % SLOTS;
    new Uint8Array(shared, 16 + SLOTS * 4 + slot * SIZE, SIZE).set(message.subarray(0, length));
    Atomics.store(header, 4 + slot, length);
    Atomics.add(header, 0, 1);
    Atomics.store(header, 1, 1);
    try {
      return original.call(this, message, ...rest);
    } finally {
      Atomics.store(header, 1, 0);
    }
  };
  const watchdog = new Worker(
    `
    const { workerData } = require('node:worker_threads');
    const SIZE = ${SIZE}, SLOTS = ${SLOTS};
    const header = new Int32Array(workerData, 0, 4 + SLOTS);
    let last = -1, since = Date.now(), reported = -1;
    setInterval(() => {
      const calls = Atomics.load(header, 0);
      if (calls !== last) { last = calls; since = Date.now(); return; }
      if (Atomics.load(header, 1) === 1 && Date.now() - since > 5000 && reported !== calls) {
        reported = calls;
        for (let k = SLOTS - 1; k >= 0; k--) {
          const slot = ((calls - k) % SLOTS + SLOTS) % SLOTS;
          const bytes = new Uint8Array(workerData, 16 + SLOTS * 4 + slot * SIZE, Atomics.load(header, 4 + slot));
          const text = Buffer.from(bytes).toString('latin1').replace(/[^\\x20-\\x7e]/g, '.');
          require('node:fs').writeSync(2, '[trace-sql] call #' + (calls - k) + (k === 0 ? ' (stuck ' + (Date.now() - since) + ' ms)' : '') + ': ' + text + '\\n');
        }
      }
    }, 1000);
    `,
    { eval: true, workerData: shared },
  );
  watchdog.unref();
}
