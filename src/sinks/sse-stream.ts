import { asyncScheduler, interval, Observable, timer, type SchedulerLike, type Subscription } from 'rxjs';

/** The part of a `ServerResponse` (after its head was written) an event stream writes to. */
export interface SseSink {
  /** Like `Writable.write`: false when the socket's buffer is full (wait for `drain`). */
  write(chunk: string): boolean;
  end(): void;
  destroy(): void;
  once(event: 'drain' | 'close', listener: () => void): unknown;
  off(event: 'drain' | 'close', listener: () => void): unknown;
  readonly writableEnded: boolean;
  readonly destroyed: boolean;
}

/** One event of a resumable source: its number (the SSE `id:`) and the event. */
export interface SseEnvelope<E extends { readonly type: string }> {
  readonly seq: number;
  readonly event: E;
}

export interface SseStreamOptions {
  /** Events numbered above this are sent (the snapshot's number, or the client's `Last-Event-ID`). */
  readonly afterSeq: number;
  /** Sent first, before any event (`event: snapshot`, `id:` its number). None on a resume. */
  readonly snapshot?: { readonly seq: number; readonly data: unknown } | undefined;
  /** Event types sent; others only move the position on. Default: all. */
  readonly types?: ReadonlySet<string> | undefined;
  /** A `: ping` comment this often (ms), so proxies keep an idle stream open. */
  readonly heartbeatMs: number;
  /** How long the socket may stay full (ms) before the client is dropped; it resumes with `Last-Event-ID`. */
  readonly drainTimeoutMs: number;
  /** Clock of the heartbeat and the drain timeout. Default `asyncScheduler`. */
  readonly scheduler?: SchedulerLike | undefined;
}

/**
 * How a stream ended: `finished` (the source completed: after `job:finished`), `closed`
 * (the client went away), `dropped` (the client read too slowly), `failed` (the source
 * errored; `error` says why). Unsubscribing (the server shutting down) ends the response
 * and emits nothing.
 */
export type SseEnding = { readonly reason: 'finished' | 'closed' | 'dropped' } | { readonly reason: 'failed'; readonly error: unknown };

/** One Server-Sent Events frame: `data` is one JSON line (JSON.stringify escapes newlines). */
export function sseFrame(type: string, id: number, data: unknown): string {
  return `event: ${type}\nid: ${id}\ndata: ${JSON.stringify(data)}\n\n`;
}

/**
 * Writes a resumable event source to a Server-Sent Events response: the snapshot, then
 * each event of `follow(afterSeq)` as one frame (`event:` its type, `id:` its number,
 * `data:` its JSON), a `: ping` comment every `heartbeatMs`, and ends the response when
 * the source completes. Emits one {@link SseEnding}, then completes.
 *
 * **Backpressure without a buffer.** When `write` says the socket is full, the source is
 * unsubscribed at once (no event is read while nothing can be sent) and followed again
 * from the last number written when the socket drains: memory per client is the socket's
 * buffer, however slow the client and however fast the job. A client that does not drain
 * within `drainTimeoutMs` is dropped; being resumable, it reconnects with `Last-Event-ID`
 * and loses nothing. Heartbeats are skipped while the socket is full.
 *
 * ```
 * source:   1 2 3 4 ·········· (re-followed after 3) 4 5 f|
 * write:    1 2 3✗  (full) ── drain ──────────────── 4 5 f   end
 * output:   ─────────────────────────────────────────────────(finished)|
 * ```
 *
 * @example
 * reply.hijack();
 * reply.raw.writeHead(200, SSE_HEADERS);
 * writeEventStream(reply.raw, (after) => followJobEvents(db, jobId, { afterSeq: after }), { afterSeq: 0, heartbeatMs: 15_000, drainTimeoutMs: 30_000 })
 *   .subscribe((ending) => log.info(ending, 'event stream ended'));
 */
export function writeEventStream<E extends { readonly type: string }>(
  sink: SseSink,
  follow: (afterSeq: number) => Observable<SseEnvelope<E>>,
  options: SseStreamOptions,
): Observable<SseEnding> {
  return new Observable<SseEnding>((subscriber) => {
    const scheduler = options.scheduler ?? asyncScheduler;
    let position = options.afterSeq;
    // Each follow gets a number: what an unsubscribed follow still emits synchronously is ignored.
    let generation = 0;
    let source: Subscription | undefined;
    let waiting: Subscription | undefined;
    let full = false;
    let done = false;

    const stopAll = (): void => {
      generation++;
      source?.unsubscribe();
      waiting?.unsubscribe();
      heartbeat.unsubscribe();
      sink.off('drain', onDrain);
      sink.off('close', onClose);
    };
    const finish = (ending: SseEnding): void => {
      if (done) return;
      done = true;
      stopAll();
      if (ending.reason === 'dropped') sink.destroy();
      else if (!sink.writableEnded && !sink.destroyed) sink.end();
      subscriber.next(ending);
      subscriber.complete();
    };
    const onClose = (): void => finish({ reason: 'closed' });
    const onDrain = (): void => {
      full = false;
      waiting?.unsubscribe();
      start();
    };
    /** Writes a chunk; a full socket stops the source until it drains. */
    const write = (chunk: string): void => {
      if (sink.write(chunk) || done) return;
      full = true;
      generation++;
      source?.unsubscribe();
      sink.once('drain', onDrain);
      waiting = timer(options.drainTimeoutMs, scheduler).subscribe(() => finish({ reason: 'dropped' }));
    };
    const start = (): void => {
      const mine = ++generation;
      const subscription = follow(position).subscribe({
        next: ({ seq, event }) => {
          if (mine !== generation || done) return;
          position = seq;
          if (options.types === undefined || options.types.has(event.type)) write(sseFrame(event.type, seq, event));
        },
        error: (error: unknown) => {
          if (mine === generation) finish({ reason: 'failed', error });
        },
        complete: () => {
          if (mine === generation) finish({ reason: 'finished' });
        },
      });
      // A source that filled the socket (or ended) while subscribing is already superseded.
      if (mine !== generation || done) subscription.unsubscribe();
      else source = subscription;
    };
    const heartbeat = interval(options.heartbeatMs, scheduler).subscribe(() => {
      if (!full && !done) write(': ping\n\n');
    });

    sink.once('close', onClose);
    if (options.snapshot) write(sseFrame('snapshot', options.snapshot.seq, options.snapshot.data));
    if (!full && !done) start();
    return () => {
      // Unsubscribed from outside (the server is shutting down): end the response, report nothing.
      if (done) return;
      done = true;
      stopAll();
      if (!sink.writableEnded && !sink.destroyed) sink.end();
    };
  });
}
