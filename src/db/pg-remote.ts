import { Worker } from 'node:worker_threads';

/** How {@link PgRemotePool} starts its thread. */
export interface PgRemoteOptions {
  readonly connectionString: string;
  /** Largest number of connections the thread's pool opens. */
  readonly max: number;
  /** The server ends a session idle inside a transaction this long (ms). */
  readonly idleInTransactionMs: number;
}

/** A query's answer, as kysely's PostgresDialect reads `pg`'s. */
export interface RemoteQueryResult {
  readonly rows: unknown[];
  readonly rowCount: number | null;
  readonly command: string;
}

type Answer = { readonly id: number; readonly value: unknown } | { readonly id: number; readonly error: PlainError };
type PlainError = Record<string, unknown> & { readonly name: string; readonly message: string; readonly errors?: PlainError[]; readonly cause?: PlainError };

interface Pending {
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
}

/**
 * `pg`'s pool in a thread of its own (`pg-thread.mjs`), as the pool kysely's `PostgresDialect`
 * takes (`connect`, a client's `query` and `release`, `end`): each statement is one message
 * each way, and the socket's writes and reads, the protocol and the rows' parsing run in that
 * thread. Rows come back by structured clone (numbers, strings, Dates, JSON values).
 *
 * - A client is a session: its first query checks a connection out of the thread's pool, and
 *   it keeps it until `release`. A release is sent with the next message (any client's), not
 *   on its own, so it costs no message: the thread handles it before that message's query.
 * - Errors keep their fields (SQLSTATE `code`, `detail`, `constraint`, an AggregateError's
 *   `errors`, a `cause`): what `sql-errors.ts` classifies.
 * - The thread keeps the process alive only while a query is outstanding, and while it ends:
 *   `end()` resolves (the thread gone) before the process may exit. Queries still in flight
 *   at `end()` fail (their connections are closed) and are answered before it.
 * - A thread that dies fails every outstanding and later query.
 *
 * @example
 * const pool = new PgRemotePool({ connectionString, max: 10, idleInTransactionMs: 10_000 });
 * const db = new Kysely<DatabaseSchema>({ dialect: new PostgresDialect({ pool }) });
 */
export class PgRemotePool {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  #releases: number[] = [];
  #nextId = 1;
  #dead: Error | null = null;
  #ended: Promise<void> | null = null;

  constructor(options: PgRemoteOptions) {
    this.#worker = new Worker(new URL('./pg-thread.mjs', import.meta.url), { workerData: { ...options } });
    this.#worker.unref();
    this.#worker.on('message', (answer: Answer) => {
      const pending = this.#pending.get(answer.id);
      if (pending === undefined) return;
      this.#pending.delete(answer.id);
      // Once ending, the thread stays ref'd: an unref while `terminate()` runs would let the
      // process exit before it resolves (a CLI then ends with code 0, its answer unprinted).
      if (this.#pending.size === 0 && this.#ended === null) this.#worker.unref();
      if ('error' in answer) pending.reject(errorOf(answer.error));
      else pending.resolve(answer.value);
    });
    const fail = (error: Error) => {
      this.#dead ??= error;
      for (const pending of this.#pending.values()) pending.reject(error);
      this.#pending.clear();
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) => fail(new Error(`the database client's thread ended (exit code ${code})`)));
  }

  /** A session (a connection is checked out in the thread with its first query). */
  connect(): Promise<RemotePgClient> {
    if (this.#dead !== null) return Promise.reject(this.#dead);
    if (this.#ended !== null) return Promise.reject(new Error('the pool has ended'));
    return Promise.resolve(new RemotePgClient(this, this.#nextId++));
  }

  /** Ends the thread's pool (its connections closed), then the thread. Idempotent. */
  end(): Promise<void> {
    this.#ended ??= (async () => {
      try {
        if (this.#dead === null) await this.#request({ op: 'end' });
      } finally {
        this.#worker.ref();
        await this.#worker.terminate();
      }
    })();
    return this.#ended;
  }

  /** @internal One statement of session `client`. */
  query(client: number, sql: string, params: readonly unknown[]): Promise<RemoteQueryResult> {
    return this.#request({ op: 'query', client, sql, params: [...params] }) as Promise<RemoteQueryResult>;
  }

  /** @internal Session `client` is done: its connection goes back with the next message. */
  release(client: number): void {
    this.#releases.push(client);
  }

  #request(message: Record<string, unknown>): Promise<unknown> {
    if (this.#dead !== null) return Promise.reject(this.#dead);
    const id = this.#nextId++;
    const releases = this.#releases;
    this.#releases = [];
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.ref();
      this.#worker.postMessage(releases.length > 0 ? { ...message, id, releases } : { ...message, id });
    });
  }
}

/** One session of a {@link PgRemotePool} (kysely's `PostgresPoolClient`). */
export class RemotePgClient {
  readonly #pool: PgRemotePool;
  readonly #id: number;
  #released = false;

  constructor(pool: PgRemotePool, id: number) {
    this.#pool = pool;
    this.#id = id;
  }

  query(sql: string, params: readonly unknown[] = []): Promise<RemoteQueryResult> {
    if (this.#released) return Promise.reject(new Error('the client was released'));
    return this.#pool.query(this.#id, sql, params);
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#pool.release(this.#id);
  }
}

/** A thread's plain error as an Error again, its fields, errors and cause kept. */
function errorOf(plain: PlainError): Error {
  const { name, message, stack, errors, cause, ...fields } = plain;
  const error = errors !== undefined ? new AggregateError(errors.map(errorOf), message) : new Error(message, cause !== undefined ? { cause: errorOf(cause) } : undefined);
  Object.assign(error, fields);
  Object.defineProperty(error, 'name', { value: name, configurable: true, writable: true });
  if (typeof stack === 'string') error.stack = stack;
  return error;
}
