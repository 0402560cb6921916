import { STATUS_CODES } from 'node:http';
import { request, type Dispatcher } from 'undici';

/**
 * The HTTP client the Gemini adapter hands the SDK for one unary call
 * (`httpOptions.fetch`): the request goes out through undici's `request` and the whole
 * answer is read into one string before the SDK sees it.
 *
 * Why not `fetch`: a unary call reads its answer whole anyway, and WHATWG fetch reads it
 * through web streams (a `ReadableStream`, a reader, transferable wrappers and an abort
 * signal per call, then the body again for `json()`). Measured with the adapter alone
 * against the Gemini-protocol server (`bench/provider-call.ts`, BENCHMARKS.md 11E): the main
 * thread's time per call fell from 1.09-1.84 to 0.47-0.89 ms (64 px answers) and from
 * 3.61-3.83 to 1.28-1.40 ms (1024 px).
 *
 * The answer is a {@link BufferedAnswer}: what `@google/genai` reads of a unary answer
 * (`ok`, `status`, `statusText`, `headers.get`/`entries`, `json()`, `text()`, checked
 * against the pinned 2.32.0), not a full `Response` (no `body` stream, no `clone`). Every
 * Gemini adapter test runs the real SDK over it.
 *
 * Errors are undici's own, as `fetch` would carry them in `cause`: an abort rejects with
 * an `AbortError`, a lost socket with `UND_ERR_SOCKET`, a refused connection with
 * `ECONNREFUSED`, the dispatcher's timeouts with `UND_ERR_HEADERS_TIMEOUT` /
 * `UND_ERR_BODY_TIMEOUT` (`classifyGeminiError` reads the code along the chain).
 */
export function bufferedFetch(dispatcher: Dispatcher): typeof fetch {
  return async (input, init) => {
    if (typeof input !== 'string' && !(input instanceof URL)) throw new TypeError('bufferedFetch: the SDK passes a URL; a Request object is not supported');
    const { statusCode, headers, body } = await request(input, {
      dispatcher,
      method: (init?.method ?? 'GET') as Dispatcher.HttpMethod,
      headers: requestHeaders(init?.headers),
      body: requestBody(init?.body),
      signal: init?.signal ?? undefined,
    });
    const text = await body.text();
    return new BufferedAnswer(statusCode, answerHeaders(headers), text) as unknown as Response;
  };
}

/** A whole answer, read: the part of `Response` the SDK uses for a unary call. */
export class BufferedAnswer {
  readonly ok: boolean;
  readonly statusText: string;
  readonly body = null;
  readonly #text: string;
  #bodyUsed = false;

  constructor(
    readonly status: number,
    readonly headers: Headers,
    text: string,
  ) {
    this.#text = text;
    this.ok = status >= 200 && status <= 299;
    this.statusText = STATUS_CODES[status] ?? '';
  }

  get bodyUsed(): boolean {
    return this.#bodyUsed;
  }

  async text(): Promise<string> {
    return this.#take();
  }

  async json(): Promise<unknown> {
    return JSON.parse(this.#take()) as unknown;
  }

  /** A body is read once, as `Response`'s is. */
  #take(): string {
    if (this.#bodyUsed) throw new TypeError('Body is unusable: Body has already been read');
    this.#bodyUsed = true;
    return this.#text;
  }
}

function requestHeaders(headers: RequestInit['headers']): Record<string, string> | undefined {
  if (headers === undefined) return undefined;
  const out: Record<string, string> = {};
  (headers instanceof Headers ? headers : new Headers(headers)).forEach((value, name) => {
    out[name] = value;
  });
  return out;
}

function requestBody(body: RequestInit['body']): string | Uint8Array | undefined {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string' || body instanceof Uint8Array) return body;
  throw new TypeError('bufferedFetch: the SDK sends a string body; this body type is not supported');
}

function answerHeaders(raw: Record<string, string | string[] | undefined>): Headers {
  const headers = new Headers();
  for (const [name, value] of Object.entries(raw)) {
    if (value === undefined) continue;
    if (typeof value === 'string') headers.append(name, value);
    else for (const v of value) headers.append(name, v);
  }
  return headers;
}
