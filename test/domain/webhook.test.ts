/**
 * Webhooks without the network: the spec's `webhook` (every problem with its field and
 * rule), the address classes a webhook may not reach (literal and resolved, IPv4-mapped
 * forms, the allow-local switch), and the Standard Webhooks signature a receiver verifies.
 */
import { Webhook, WebhookVerificationError } from 'standardwebhooks';
import { describe, expect, it } from 'vitest';
import { JobSpecError, parseJobSpec, type SpecProblem } from '../../src/domain/job-spec.js';
import { forbiddenAddressClass, printableWebhookUrl, webhookEventOf, webhookUrlRule } from '../../src/domain/webhook.js';
import { signWebhook } from '../../src/sinks/webhook-sender.js';
import { resolveWebhookTarget, WebhookTargetError, type LookupAll } from '../../src/sinks/webhook-target.js';

const stages = [{ quantity: 1, prompt: 'p', mergedImageAttachId: 'a1' }];

const problemsOf = (webhook: unknown, allowLocalWebhooks = false): SpecProblem[] => {
  try {
    parseJobSpec({ userId: 'u', stages, webhook }, { allowLocalWebhooks });
  } catch (error) {
    if (error instanceof JobSpecError) return [...error.problems];
    throw error;
  }
  return [];
};

describe('the spec webhook', () => {
  it('defaults events to job.finished, keeps the order given, and is absent when not given', () => {
    expect(parseJobSpec({ userId: 'u', stages, webhook: { url: 'https://hooks.example.com/x' } }).webhook).toEqual({ url: 'https://hooks.example.com/x', events: ['job.finished'] });
    expect(parseJobSpec({ userId: 'u', stages, webhook: { url: 'https://hooks.example.com/x', events: ['image.delivered', 'stage.finished'] } }).webhook).toEqual({
      url: 'https://hooks.example.com/x',
      events: ['image.delivered', 'stage.finished'],
    });
    expect('webhook' in parseJobSpec({ userId: 'u', stages })).toBe(false);
  });

  it('names every problem with its field and rule, unknown keys included', () => {
    expect(problemsOf({ url: 'ftp://x.example.com', events: ['job.finished', 'job.started', 'job.finished', 3], secret: 'x' })).toEqual([
      { field: 'webhook.secret', rule: 'is not a webhook field (known: url, events)' },
      { field: 'webhook.url', rule: 'must use https, got ftp' },
      { field: 'webhook.events[1]', rule: 'must be one of job.finished, stage.finished, image.delivered, got string "job.started"' },
      { field: 'webhook.events[2]', rule: 'repeats job.finished' },
      { field: 'webhook.events[3]', rule: 'must be one of job.finished, stage.finished, image.delivered, got number 3' },
    ]);
    expect(problemsOf({})).toEqual([{ field: 'webhook.url', rule: 'is required' }]);
    expect(problemsOf('https://x.example.com')).toEqual([{ field: 'webhook', rule: 'must be an object { url, events? }, got string "https://x.example.com"' }]);
    expect(problemsOf({ url: 5 })).toEqual([{ field: 'webhook.url', rule: 'must be a string, got number 5' }]);
    expect(problemsOf({ url: 'not a url' })).toEqual([{ field: 'webhook.url', rule: 'must be an absolute URL (https://host/path)' }]);
    expect(problemsOf({ url: 'https://x.example.com', events: [] })).toEqual([
      { field: 'webhook.events', rule: 'must name at least one of job.finished, stage.finished, image.delivered (leave it out for job.finished)' },
    ]);
    expect(problemsOf({ url: 'https://x.example.com', events: 'job.finished' })).toEqual([{ field: 'webhook.events', rule: 'must be an array of event types, got string "job.finished"' }]);
    expect(problemsOf({ url: `https://x.example.com/${'a'.repeat(2048)}` })[0]?.rule).toMatch(/^must be at most 2048 characters/);
  });

  it('takes http only to this machine, and only with allow-local', () => {
    expect(problemsOf({ url: 'http://hooks.example.com/x' })).toEqual([{ field: 'webhook.url', rule: 'must use https (http only to localhost or 127.0.0.1, with IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1)' }]);
    expect(problemsOf({ url: 'http://hooks.example.com/x' }, true)).toEqual([{ field: 'webhook.url', rule: 'must use https (http only to localhost or 127.0.0.1, with IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1)' }]);
    for (const url of ['http://127.0.0.1:8123/hook', 'http://localhost:9/x', 'http://[::1]:80/']) {
      expect(problemsOf({ url })).toEqual([{ field: 'webhook.url', rule: 'must use https: http to localhost or 127.0.0.1 needs IMAGEGEN_WEBHOOK_ALLOW_LOCAL=1 (for tests)' }]);
      expect(problemsOf({ url }, true)).toEqual([]);
    }
  });

  it('refuses a literal address of each refused class in the URL, unless allowed', () => {
    for (const [host, klass] of [
      ['10.1.2.3', 'private'],
      ['172.16.0.1', 'private'],
      ['172.31.255.255', 'private'],
      ['192.168.1.1', 'private'],
      ['127.0.0.1', 'loopback'],
      ['169.254.169.254', 'link-local'],
      ['0.0.0.0', 'unspecified'],
      ['100.64.0.1', 'cgnat'],
      ['[::1]', 'loopback'],
      ['[::]', 'unspecified'],
      ['[fd00::1]', 'private'],
      ['[fe80::1]', 'link-local'],
      ['[::ffff:10.0.0.1]', 'private'],
      ['[::ffff:127.0.0.1]', 'loopback'],
      ['localhost', 'loopback'],
    ] as const) {
      const rule = webhookUrlRule(`https://${host}/hook`);
      expect(rule, host).toMatch(new RegExp(`^must not point to a ${klass} address`));
      expect(webhookUrlRule(`https://${host}/hook`, { allowLocal: true }), host).toBeNull();
    }
    for (const host of ['8.8.8.8', '172.32.0.1', '100.128.0.1', '[2606:4700::1111]', 'hooks.example.com']) expect(webhookUrlRule(`https://${host}/hook`), host).toBeNull();
  });
});

describe('forbiddenAddressClass', () => {
  it.each([
    ['10.0.0.0', 'private'],
    ['10.255.255.255', 'private'],
    ['172.16.0.0', 'private'],
    ['172.15.255.255', null],
    ['192.168.0.1', 'private'],
    ['192.169.0.1', null],
    ['127.0.0.1', 'loopback'],
    ['127.255.0.9', 'loopback'],
    ['169.254.0.1', 'link-local'],
    ['0.0.0.0', 'unspecified'],
    ['100.64.0.0', 'cgnat'],
    ['100.127.255.255', 'cgnat'],
    ['100.63.255.255', null],
    ['224.0.0.1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['93.184.216.34', null],
    ['::', 'unspecified'],
    ['::1', 'loopback'],
    ['fc00::1', 'private'],
    ['fdff:ffff::1', 'private'],
    ['fe80::1', 'link-local'],
    ['febf::1', 'link-local'],
    ['fec0::1', null],
    ['::ffff:192.168.0.1', 'private'],
    ['::ffff:c0a8:1', 'private'],
    ['::ffff:7f00:1', 'loopback'],
    ['::ffff:169.254.169.254', 'link-local'],
    ['::ffff:100.64.0.1', 'cgnat'],
    ['::ffff:0.0.0.0', 'unspecified'],
    ['64:ff9b::10.0.0.1', 'private'],
    ['::ffff:8.8.8.8', null],
    ['2001:4860:4860::8888', null],
    ['not-an-ip', null],
  ])('%s is %s', (address, klass) => {
    expect(forbiddenAddressClass(address)).toBe(klass);
  });
});

describe('resolveWebhookTarget (the resolution check, before every send)', () => {
  const answering = (addresses: [string, number][]): LookupAll => async () => addresses.map(([address, family]) => ({ address, family }));

  it('refuses a host name when any of its addresses is refused, names the address and its class', async () => {
    const url = new URL('https://hooks.example.com/x');
    await expect(resolveWebhookTarget(url, {}, answering([['93.184.216.34', 4], ['10.0.0.7', 4]]))).rejects.toMatchObject({
      kind: 'forbidden_address',
      rule: expect.stringMatching(/^must not point to a private address \(hooks\.example\.com resolves to 10\.0\.0\.7\)/),
    });
    await expect(resolveWebhookTarget(url, {}, answering([['::ffff:127.0.0.1', 6]]))).rejects.toMatchObject({ kind: 'forbidden_address', rule: expect.stringMatching(/loopback/) });
    await expect(resolveWebhookTarget(url, {}, answering([['fe80::1', 6]]))).rejects.toMatchObject({ rule: expect.stringMatching(/link-local/) });
    await expect(resolveWebhookTarget(url, {}, answering([['100.100.1.1', 4]]))).rejects.toMatchObject({ rule: expect.stringMatching(/cgnat/) });
  });

  it('answers the first address of a public host, or any with allow-local; a host that does not resolve is a dns error', async () => {
    const url = new URL('https://hooks.example.com/x');
    expect(await resolveWebhookTarget(url, {}, answering([['93.184.216.34', 4], ['2606:2800::1', 6]]))).toEqual({ address: '93.184.216.34', family: 4 });
    expect(await resolveWebhookTarget(url, { allowLocal: true }, answering([['10.0.0.7', 4]]))).toEqual({ address: '10.0.0.7', family: 4 });
    const missing: LookupAll = async () => {
      throw Object.assign(new Error('nope'), { code: 'ENOTFOUND' });
    };
    const error = await resolveWebhookTarget(url, {}, missing).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(WebhookTargetError);
    expect(error).toMatchObject({ kind: 'dns', code: 'ENOTFOUND' });
  });
});

describe('the signature', () => {
  it('verifies with standardwebhooks Webhook.verify, and fails for another secret, body or id', () => {
    const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
    const body = JSON.stringify({ type: 'job.finished', timestamp: new Date().toISOString(), data: { jobId: 'j1' } });
    const headers = signWebhook(secret, 'msg_j1_3', new Date(), body);
    expect(headers['webhook-signature']).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    expect(new Webhook(secret).verify(body, headers)).toEqual(JSON.parse(body));
    expect(() => new Webhook(`whsec_${Buffer.alloc(32, 8).toString('base64')}`).verify(body, headers)).toThrow(WebhookVerificationError);
    expect(() => new Webhook(secret).verify(body.replace('j1', 'j2'), headers)).toThrow(WebhookVerificationError);
    expect(() => new Webhook(secret).verify(body, { ...headers, 'webhook-id': 'msg_j1_4' })).toThrow(WebhookVerificationError);
  });
});

describe('small parts', () => {
  it('maps logged events to webhook events', () => {
    expect(['slot:delivered', 'stage:completed', 'stage:short', 'job:finished', 'attempt:failed', 'job:cancel-requested'].map(webhookEventOf)).toEqual([
      'image.delivered',
      'stage.finished',
      'stage.finished',
      'job.finished',
      null,
      null,
    ]);
  });

  it('prints a URL without its credentials', () => {
    expect(printableWebhookUrl('https://user:pa55@hooks.example.com/x?y=1')).toBe('https://***:***@hooks.example.com/x?y=1');
    expect(printableWebhookUrl('https://hooks.example.com/x')).toBe('https://hooks.example.com/x');
  });
});
