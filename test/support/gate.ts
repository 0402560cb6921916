/**
 * Holds the fake Gemini server's calls until the test lets them go: `hold` is the server's
 * `hold` option; `release(n)` answers call n, `open()` answers every call held and every
 * later one. A test decides when images arrive, so it never waits on a clock.
 */
export class Gate {
  readonly #waiting = new Map<number, () => void>();
  readonly #released = new Set<number>();
  #open = false;

  readonly hold = (call: { readonly n: number }): Promise<void> | void => {
    if (this.#open || this.#released.has(call.n)) return;
    return new Promise<void>((resolve) => this.#waiting.set(call.n, resolve));
  };

  /** Lets call `n` answer (now, or when it arrives). */
  release(n: number): void {
    this.#released.add(n);
    this.#waiting.get(n)?.();
    this.#waiting.delete(n);
  }

  /** Lets every call answer, from now on. */
  open(): void {
    this.#open = true;
    for (const resolve of this.#waiting.values()) resolve();
    this.#waiting.clear();
  }
}
