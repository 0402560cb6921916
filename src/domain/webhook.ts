/**
 * Webhooks of a job spec (`webhook: { url, events? }`): the event types a receiver may
 * subscribe to, how a logged job event maps to one, and the URL rules that can be checked
 * without the network (scheme, literal addresses). Pure: no I/O; the resolution check
 * (`dns.lookup`, every address) is `src/sinks/webhook-target.ts`.
 */
import type { SpecProblem } from './job-spec.js';

/** What a receiver may subscribe to; `job.finished` is the default subscription. */
export const WEBHOOK_EVENT_TYPES = ['job.finished', 'stage.finished', 'image.delivered'] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

/** The subscription when `events` is absent. */
export const DEFAULT_WEBHOOK_EVENTS: readonly WebhookEventType[] = Object.freeze(['job.finished']);

/** Longest webhook URL accepted. */
export const MAX_WEBHOOK_URL_LENGTH = 2048;

/** A job's webhook as stored with its spec. */
export interface WebhookSpec {
  readonly url: string;
  /** Unique, in the order given; never empty. */
  readonly events: readonly WebhookEventType[];
}

/**
 * The webhook event a logged job event is reported as, or null when none is:
 * `slot:delivered` -> `image.delivered`, `stage:completed`/`stage:short` ->
 * `stage.finished`, `job:finished` -> `job.finished`.
 */
export function webhookEventOf(jobEventType: string): WebhookEventType | null {
  switch (jobEventType) {
    case 'slot:delivered':
      return 'image.delivered';
    case 'stage:completed':
    case 'stage:short':
      return 'stage.finished';
    case 'job:finished':
      return 'job.finished';
    default:
      return null;
  }
}

/** Why an address may not receive webhooks; null: a public address. */
export type AddressClass = 'private' | 'loopback' | 'link-local' | 'unspecified' | 'cgnat' | 'multicast' | 'reserved';

/** IPv4 dotted quad to its 4 bytes, or null. */
function ipv4Bytes(text: string): number[] | null {
  const parts = text.split('.');
  if (parts.length !== 4) return null;
  const bytes = parts.map((p) => (/^(0|[1-9][0-9]{0,2})$/.test(p) ? Number(p) : NaN));
  return bytes.every((b) => b >= 0 && b <= 255) ? bytes : null;
}

/** IPv6 text (no brackets, no zone) to its 16 bytes, or null. Accepts a trailing dotted quad. */
function ipv6Bytes(text: string): number[] | null {
  let head = text;
  let tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  if (text.includes('.')) {
    const quad = ipv4Bytes(text.slice(lastColon + 1));
    if (quad === null) return null;
    tail = quad;
    head = text.slice(0, lastColon + 1) + '0:0';
  }
  const halves = head.split('::');
  if (halves.length > 2) return null;
  const groups = (s: string) => (s === '' ? [] : s.split(':'));
  const left = groups(halves[0] as string);
  const right = halves.length === 2 ? groups(halves[1] as string) : [];
  const missing = 8 - left.length - right.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const all = [...left, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...right];
  if (all.some((g) => !/^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  const bytes = all.flatMap((g) => [parseInt(g, 16) >> 8, parseInt(g, 16) & 0xff]);
  if (tail.length === 4) bytes.splice(12, 4, ...tail);
  return bytes;
}

function ipv4Class(b: readonly number[]): AddressClass | null {
  const [a, c] = [b[0] as number, b[1] as number];
  if (a === 0) return 'unspecified';
  if (a === 10 || (a === 172 && c >= 16 && c <= 31) || (a === 192 && c === 168)) return 'private';
  if (a === 127) return 'loopback';
  if (a === 169 && c === 254) return 'link-local';
  if (a === 100 && c >= 64 && c <= 127) return 'cgnat';
  if (a >= 224 && a <= 239) return 'multicast';
  if (a >= 240) return 'reserved';
  return null;
}

/**
 * The class of a literal IP address that may not receive webhooks, or null for a public
 * one (and for text that is not an IP address). IPv4: 0/8 unspecified, 10/8, 172.16/12,
 * 192.168/16 private, 127/8 loopback, 169.254/16 link-local, 100.64/10 CGNAT, 224/4
 * multicast, 240/4 reserved. IPv6: `::` unspecified, `::1` loopback, fc00::/7 private,
 * fe80::/10 link-local, ff00::/8 multicast; an IPv4 address inside IPv6 (mapped
 * `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`) is classed as that
 * IPv4 address, so `::ffff:127.0.0.1` is loopback.
 */
export function forbiddenAddressClass(address: string): AddressClass | null {
  const text = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
  const v4 = ipv4Bytes(text);
  if (v4) return ipv4Class(v4);
  const b = ipv6Bytes(text.split('%')[0] as string);
  if (!b) return null;
  const zeros = (from: number, to: number) => b.slice(from, to).every((x) => x === 0);
  if (zeros(0, 16)) return 'unspecified';
  if (zeros(0, 15) && b[15] === 1) return 'loopback';
  const embedded = b.slice(12, 16);
  if (zeros(0, 10) && b[10] === 0xff && b[11] === 0xff) return ipv4Class(embedded);
  if (zeros(0, 12)) return ipv4Class(embedded);
  if (b[0] === 0x00 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && zeros(4, 12)) return ipv4Class(embedded);
  const first = b[0] as number;
  if ((first & 0xfe) === 0xfc) return 'private';
  if (first === 0xfe && ((b[1] as number) & 0xc0) === 0x80) return 'link-local';
  if (first === 0xff) return 'multicast';
  return null;
}

/** Whether `hostname` (as `URL.hostname` gives it) names this machine: `localhost`, `*.localhost`, 127/8, `::1`. */
export function isLoopbackHost(hostname: string): boolean {
  const host = hostname.toLowerCase().replace(/\.$/, '');
  return host === 'localhost' || host.endsWith('.localhost') || forbiddenAddressClass(host) === 'loopback';
}

/** How webhook URLs are checked. */
export interface WebhookUrlPolicy {
  /**
   * `IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1` (tests, development): `http://` to this machine
   * (`localhost`, 127/8, `::1`) and addresses of any class. Default false: `https` only,
   * public addresses only.
   */
  readonly allowLocal?: boolean;
}

/** The words of an address-class refusal, shared by the submit and send checks. */
export function addressClassRule(what: string, klass: AddressClass): string {
  return `must not point to a ${klass} address (${what}); webhooks go to public https endpoints only (IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1 allows local ones, for tests)`;
}

/**
 * The rule a webhook URL breaks, checked without the network, or null: a URL of at most
 * 2048 characters; `https`, or `http` to this machine when local targets are allowed; a
 * host that is not a literal address of a refused class (unless allowed). A host name
 * that resolves to one is refused when the job is submitted and again at every send.
 */
export function webhookUrlRule(value: string, policy: WebhookUrlPolicy = {}): string | null {
  if (value.length > MAX_WEBHOOK_URL_LENGTH) return `must be at most ${MAX_WEBHOOK_URL_LENGTH} characters, got ${value.length}`;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'must be an absolute URL (https://host/path)';
  }
  const allowLocal = policy.allowLocal === true;
  if (url.protocol === 'http:') {
    if (!isLoopbackHost(url.hostname)) return 'must use https (http only to localhost or 127.0.0.1, with IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1)';
    if (!allowLocal) return 'must use https: http to localhost or 127.0.0.1 needs IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1 (for tests)';
  } else if (url.protocol !== 'https:') {
    return `must use https, got ${url.protocol.replace(/:$/, '')}`;
  }
  if (url.hostname === '') return 'must name a host';
  if (!allowLocal) {
    const klass = isLoopbackHost(url.hostname) ? 'loopback' : forbiddenAddressClass(url.hostname);
    if (klass !== null) return addressClassRule(url.hostname, klass);
  }
  return null;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `${typeof value} ${JSON.stringify(value)?.slice(0, 40)}`;
}

/**
 * Reads a spec's `webhook` (see {@link WebhookSpec}), pushing every problem with its field
 * (`webhook.url`, `webhook.events[1]`, ...). Unknown keys inside `webhook` are refused: a
 * misspelt `event` would otherwise silently subscribe to the default only.
 */
export function parseWebhookSpec(raw: unknown, policy: WebhookUrlPolicy, problems: SpecProblem[]): WebhookSpec | null {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    problems.push({ field: 'webhook', rule: `must be an object { url, events? }, got ${describe(raw)}` });
    return null;
  }
  const before = problems.length;
  const record = raw as Record<string, unknown>;
  for (const key of Object.keys(record)) {
    if (key !== 'url' && key !== 'events') problems.push({ field: `webhook.${key}`, rule: 'is not a webhook field (known: url, events)' });
  }
  const url = record['url'];
  if (url === undefined || url === null) problems.push({ field: 'webhook.url', rule: 'is required' });
  else if (typeof url !== 'string') problems.push({ field: 'webhook.url', rule: `must be a string, got ${describe(url)}` });
  else {
    const rule = webhookUrlRule(url, policy);
    if (rule !== null) problems.push({ field: 'webhook.url', rule });
  }
  let events: WebhookEventType[] = [...DEFAULT_WEBHOOK_EVENTS];
  const rawEvents = record['events'];
  if (rawEvents !== undefined && rawEvents !== null) {
    if (!Array.isArray(rawEvents)) problems.push({ field: 'webhook.events', rule: `must be an array of event types, got ${describe(rawEvents)}` });
    else if (rawEvents.length === 0) problems.push({ field: 'webhook.events', rule: `must name at least one of ${WEBHOOK_EVENT_TYPES.join(', ')} (leave it out for job.finished)` });
    else {
      events = [];
      rawEvents.forEach((event: unknown, i) => {
        const field = `webhook.events[${i}]`;
        if (typeof event !== 'string' || !(WEBHOOK_EVENT_TYPES as readonly string[]).includes(event)) {
          problems.push({ field, rule: `must be one of ${WEBHOOK_EVENT_TYPES.join(', ')}, got ${describe(event)}` });
        } else if (events.includes(event as WebhookEventType)) {
          problems.push({ field, rule: `repeats ${event}` });
        } else events.push(event as WebhookEventType);
      });
    }
  }
  if (problems.length > before) return null;
  return Object.freeze({ url: url as string, events: Object.freeze(events) });
}

/** The URL as it may be printed or logged: user name and password replaced. */
export function printableWebhookUrl(value: string): string {
  try {
    const url = new URL(value);
    if (url.username === '' && url.password === '') return value;
    url.username = url.username === '' ? '' : '***';
    url.password = url.password === '' ? '' : '***';
    return url.toString();
  } catch {
    return '(invalid URL)';
  }
}
