import { lookup as dnsLookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { addressClassRule, forbiddenAddressClass, webhookUrlRule, type WebhookUrlPolicy } from '../domain/webhook.js';

/** One resolved address of a host. */
export interface ResolvedAddress {
  readonly address: string;
  /** 4 or 6. */
  readonly family: number;
}

/** Every address of a host name (`dns.lookup` with `all: true` by default). */
export type LookupAll = (hostname: string) => Promise<readonly ResolvedAddress[]>;

/** The system resolver, every address, in its order. */
export const systemLookup: LookupAll = (hostname) => dnsLookup(hostname, { all: true, verbatim: true });

/** Why a webhook URL cannot be sent to: `forbidden_address` (a rule), `dns` (the host does not resolve now). */
export class WebhookTargetError extends Error {
  override readonly name = 'WebhookTargetError';
  constructor(
    readonly kind: 'forbidden_address' | 'dns',
    /** The rule in words, without the URL's credentials or path. */
    readonly rule: string,
    /** The resolver's code (`ENOTFOUND`, `EAI_AGAIN`, ...) for `dns`. */
    readonly code?: string,
  ) {
    super(rule);
  }
}

/**
 * Where a webhook to `url` may connect: the first of the host's addresses, after
 * checking the URL's rules (`webhookUrlRule`) and **every** address the host resolves to
 * (`forbiddenAddressClass`: private, loopback, link-local, unspecified, CGNAT, multicast,
 * reserved, and their IPv4-in-IPv6 forms) unless `policy.allowLocal`. The sender then
 * connects to exactly this address (a pinned `lookup`), so a DNS answer that changes
 * between this check and the connect (DNS rebinding) cannot move the request.
 *
 * @throws {WebhookTargetError} a refused URL or address (`forbidden_address`), a host that does not resolve (`dns`).
 */
export async function resolveWebhookTarget(url: URL, policy: WebhookUrlPolicy = {}, lookup: LookupAll = systemLookup): Promise<ResolvedAddress> {
  const rule = webhookUrlRule(url.href, policy);
  if (rule !== null) throw new WebhookTargetError('forbidden_address', rule);
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  let addresses: readonly ResolvedAddress[];
  if (isIP(host) !== 0) addresses = [{ address: host, family: isIP(host) }];
  else {
    try {
      addresses = await lookup(host);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code ?? 'ENOTFOUND';
      throw new WebhookTargetError('dns', `host ${host} does not resolve (${code})`, code);
    }
    if (addresses.length === 0) throw new WebhookTargetError('dns', `host ${host} has no address`, 'ENODATA');
  }
  if (policy.allowLocal !== true) {
    for (const { address } of addresses) {
      const klass = forbiddenAddressClass(address);
      if (klass !== null) throw new WebhookTargetError('forbidden_address', addressClassRule(`${host} resolves to ${address}`, klass));
    }
  }
  return addresses[0] as ResolvedAddress;
}
