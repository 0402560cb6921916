/**
 * Reads the Prometheus text exposition format (what `GET /metrics` answers) the way a
 * scraper does, so tests assert on the values served, not on the objects behind them.
 *
 *   imagegen_attempts_total{class="none",outcome="delivered"} 12
 *     --> samples.get('imagegen_attempts_total{class="none",outcome="delivered"}') === 12
 */

/** Every sample by series key: the name, then its labels sorted by name (`name{a="x",b="y"}`). */
export type Samples = ReadonlyMap<string, number>;

/** The series key of `name` with `labels`, as {@link parseExposition} keys samples. */
export function seriesKey(name: string, labels: Readonly<Record<string, string>> = {}): string {
  const pairs = Object.entries(labels).sort(([a], [b]) => a.localeCompare(b));
  return pairs.length === 0 ? name : `${name}{${pairs.map(([k, v]) => `${k}="${v}"`).join(',')}}`;
}

/** Parses an exposition; a malformed line or a series given twice throws (the format forbids both). */
export function parseExposition(text: string): Samples {
  const samples = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.trim() === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/.exec(line);
    if (!match) throw new Error(`not an exposition sample line: ${JSON.stringify(line)}`);
    const [, name, labelText, valueText] = match as unknown as [string, string, string | undefined, string];
    const labels: Record<string, string> = {};
    for (const pair of (labelText ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1] as string] = pair[2] as string;
    const key = seriesKey(name, labels);
    if (samples.has(key)) throw new Error(`series ${key} appears twice`);
    samples.set(key, parseValue(valueText));
  }
  return samples;
}

/** Prometheus reads `NaN`, `+Inf`, `-Inf` case-insensitively (Go's ParseFloat); prom-client writes `Nan`. */
function parseValue(text: string): number {
  const lower = text.toLowerCase();
  if (lower === 'nan') return Number.NaN;
  if (lower === '+inf' || lower === 'inf') return Number.POSITIVE_INFINITY;
  if (lower === '-inf') return Number.NEGATIVE_INFINITY;
  const value = Number(text);
  if (Number.isNaN(value)) throw new Error(`not a sample value: ${JSON.stringify(text)}`);
  return value;
}

/** The value of one series; throws naming it when the exposition does not hold it. */
export function sampleOf(samples: Samples, name: string, labels: Readonly<Record<string, string>> = {}): number {
  const value = samples.get(seriesKey(name, labels));
  if (value === undefined) throw new Error(`no sample ${seriesKey(name, labels)} in the exposition`);
  return value;
}

/** Every series of `name` with its labels, for sums and per-label comparisons. */
export function seriesOf(samples: Samples, name: string): { labels: Record<string, string>; value: number }[] {
  return [...samples].flatMap(([key, value]) => {
    const match = /^([^{]+)(?:\{(.*)\})?$/.exec(key);
    if (match?.[1] !== name) return [];
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1] as string] = pair[2] as string;
    return [{ labels, value }];
  });
}

/** `imagegen_attempts_total` as the summary's `attempts.byClass`: failed attempts per class, classes with none left out. */
export function failedByClass(samples: Samples): Record<string, number> {
  return Object.fromEntries(
    seriesOf(samples, 'imagegen_attempts_total')
      .filter((s) => s.labels['outcome'] === 'failed' && s.value > 0)
      .map((s) => [s.labels['class'] as string, s.value]),
  );
}
