import { Worker } from 'node:worker_threads';

/** What the embedded database answers a query with (PGlite's `Results`, the part Kysely reads). */
export interface RemoteResults {
  readonly rows: unknown[];
  readonly affectedRows?: number | undefined;
}

/** How {@link PgliteRemote.open} starts the database in its thread. */
export interface RemoteOpenOptions {
  /** The data folder; undefined: in memory. */
  readonly dataDir?: string | undefined;
  /** A gzipped tar of a data folder to start from (PGlite's `loadDataDir`), handed over (transferred). */
  readonly loadDataDir?: Uint8Array | undefined;
  /** postgres's start parameters after PGlite's defaults (`-c name=value` pairs). Default none. */
  readonly extraStartParams?: readonly string[] | undefined;
}

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
}

type Answer = { readonly id: number; readonly value: unknown } | { readonly id: number; readonly error: Record<string, unknown> & { message: string } };
type Notification = { readonly op: 'notification'; readonly listener: number; readonly payload: string };

/**
 * PGlite in a thread of its own (`pglite-thread.mjs`), with the part of PGlite's API the
 * project uses: `query` (what `kysely-pglite-dialect` calls), `listen`, `dumpDataDir`,
 * `close`. The SQL, postgres's WASM and the parsing of rows run off the main thread (which
 * never loads PGlite's module); rows
 * come back by structured clone (numbers, strings, Dates, byte arrays, JSON values).
 *
 * - Errors keep their fields: a SQL error's `code` (SQLSTATE), `detail`, `constraint` are
 *   what `sql-errors.ts` reads.
 * - The thread keeps the process alive only while a request is outstanding, as PGlite in
 *   the main thread did (it holds no handle): an idle embedded database never stops a
 *   process from exiting.
 * - A thread that dies fails every outstanding and later request.
 *
 * @example
 * const remote = await PgliteRemote.open({ dataDir, extraStartParams: ['-c', 'shared_buffers=16MB'] });
 * const { rows } = await remote.query('select 1 as one', []);
 */
export class PgliteRemote {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  readonly #listeners = new Map<number, (payload: string) => void>();
  #nextId = 1;
  #dead: Error | null = null;
  #beginDeferred = false;
  #closing = false;
  #sent = 0;

  private constructor(worker: Worker) {
    this.#worker = worker;
    worker.unref();
    worker.on('message', (message: Answer | Notification) => {
      if ('op' in message) {
        this.#listeners.get(message.listener)?.(message.payload);
        return;
      }
      const pending = this.#pending.get(message.id);
      if (!pending) return;
      this.#pending.delete(message.id);
      // Once closing, the thread stays ref'd: an unref while `terminate()` runs would let the
      // process exit before it resolves (a CLI then ends with code 0, its answer unprinted).
      if (this.#pending.size === 0 && !this.#closing) this.#worker.unref();
      if ('error' in message) pending.reject(Object.assign(new Error(message.error.message), message.error));
      else pending.resolve(message.value);
    });
    const fail = (error: Error) => {
      this.#dead ??= error;
      for (const pending of this.#pending.values()) pending.reject(error);
      this.#pending.clear();
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the embedded database's thread ended (exit code ${code})`)));
  }

  /** Starts the thread and the database in it. */
  static async open(options: RemoteOpenOptions): Promise<PgliteRemote> {
    const remote = new PgliteRemote(new Worker(new URL('./pglite-thread.mjs', import.meta.url)));
    const bytes = options.loadDataDir;
    // The thread takes the template's bytes over without a copy.
    const buffer = bytes === undefined ? undefined : bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength ? bytes.buffer : bytes.slice().buffer;
    try {
      await remote.#request({ op: 'open', dataDir: options.dataDir, loadDataDir: buffer, extraStartParams: [...(options.extraStartParams ?? [])] }, buffer instanceof ArrayBuffer ? [buffer] : []);
    } catch (error) {
      await remote.#worker.terminate();
      throw error;
    }
    return remote;
  }

  /**
   * Runs one statement. A plain `begin` (what kysely sends to open a transaction) is not sent
   * alone: it goes to the thread with the next request, which runs it first (one message each
   * way per transaction fewer; BENCHMARKS.md 11D). It cannot fail where it would have failed
   * alone, so the transaction is the same: the next statement runs inside it.
   */
  query(sql: string, params: readonly unknown[] = []): Promise<RemoteResults> {
    if (sql === 'begin' && params.length === 0 && !this.#beginDeferred && !this.#dead) {
      this.#beginDeferred = true;
      return Promise.resolve({ rows: [], affectedRows: 0 });
    }
    return this.#request({ op: 'query', sql, params: [...params] }) as Promise<RemoteResults>;
  }

  /** Messages sent to the thread so far (tests and benchmarks count round trips with it). */
  get sent(): number {
    return this.#sent;
  }

  /** LISTEN on `channel`; resolves with the function that stops it. */
  async listen(channel: string, onPayload: (payload: string) => void): Promise<() => Promise<void>> {
    const listener = this.#nextId++;
    this.#listeners.set(listener, onPayload);
    try {
      await this.#request({ op: 'listen', channel, listener });
    } catch (error) {
      this.#listeners.delete(listener);
      throw error;
    }
    return async () => {
      if (!this.#listeners.delete(listener)) return;
      await this.#request({ op: 'unlisten', listener });
    };
  }

  /** A gzipped tar of the data folder (PGlite's `dumpDataDir('gzip')`). */
  async dumpDataDir(_compression: 'gzip'): Promise<Blob> {
    return new Blob([(await this.#request({ op: 'dump' })) as ArrayBuffer]);
  }

  /** Closes the database, then ends its thread. Idempotent. */
  async close(): Promise<void> {
    if (this.#dead) return;
    this.#closing = true;
    try {
      await this.#request({ op: 'close' });
    } finally {
      this.#listeners.clear();
      this.#worker.ref();
      await this.#worker.terminate();
    }
  }

  #request(message: Record<string, unknown>, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.#dead) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const begin = this.#beginDeferred;
    this.#beginDeferred = false;
    this.#sent++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.ref();
      this.#worker.postMessage({ ...message, id, ...(begin ? { begin } : {}) }, transfer);
    });
  }
}
