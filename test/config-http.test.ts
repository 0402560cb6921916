/** `imagegen serve`'s settings: tokens (hashed at once, never printed), port and host, limits. */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { DEFAULT_HTTP_OPTIONS, tokenSha256 } from '../src/http/defaults.js';
import { refusal } from './support/config-refusal.js';

const ALICE = 'alice-secret-token-0001';
const BOB = 'bob-secret-token-000002';
const ADMIN = 'admin-secret-token-0003';

describe('loadConfig: the service (imagegen serve)', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'imagegen-tokens-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('defaults: port 8080 on 127.0.0.1, 30 MiB bodies, 600 requests a minute, 8 streams per token, a ping every 15 s, no tokens', () => {
    const http = loadConfig({}).http;
    expect(http).toEqual({
      port: 8080,
      host: '127.0.0.1',
      bodyLimitBytes: 30 * 1024 * 1024,
      rateLimitPerMinute: 600,
      maxStreamsPerToken: 8,
      heartbeatMs: 15_000,
      tokens: [],
      adminTokens: [],
      linkTtlSeconds: 3600,
      pageSessionSeconds: 43_200,
      publicUrl: 'http://127.0.0.1:8080',
    });
    expect(DEFAULT_HTTP_OPTIONS).toMatchObject({ port: http.port, host: http.host, bodyLimitBytes: http.bodyLimitBytes });
  });

  it('the live page: IMAGEGEN_PUBLIC_URL (else where serve listens), link and session lifetimes, each checked', () => {
    expect(loadConfig({ IMAGEGEN_PUBLIC_URL: 'https://images.example.com/app/' }).http.publicUrl).toBe('https://images.example.com/app');
    expect(loadConfig({}, { httpPort: '9001', httpHost: '0.0.0.0' }).http.publicUrl).toBe('http://127.0.0.1:9001');
    expect(loadConfig({}, { httpHost: '::1' }).http.publicUrl).toBe('http://[::1]:8080');
    expect(loadConfig({ IMAGEGEN_LINK_TTL_SECONDS: '600', IMAGEGEN_PAGE_SESSION_SECONDS: '3600' }).http).toMatchObject({ linkTtlSeconds: 600, pageSessionSeconds: 3600 });
    for (const bad of ['ftp://x.example', 'not a url', 'https://u:p@x.example', 'https://x.example/?a=1', 'https://x.example/#f']) {
      const refused = refusal({ IMAGEGEN_PUBLIC_URL: bad });
      expect(refused?.variable, bad).toBe('IMAGEGEN_PUBLIC_URL');
      expect(refused?.message).toContain('must be an http or https URL');
    }
    expect(refusal({ IMAGEGEN_LINK_TTL_SECONDS: '9' })?.variable).toBe('IMAGEGEN_LINK_TTL_SECONDS');
    expect(refusal({ IMAGEGEN_PAGE_SESSION_SECONDS: '59' })?.variable).toBe('IMAGEGEN_PAGE_SESSION_SECONDS');
  });

  it('flags win over the variables; port 0 means a free port', () => {
    const env = { IMAGEGEN_HTTP_PORT: '9000', IMAGEGEN_HTTP_HOST: '0.0.0.0' };
    expect(loadConfig(env).http).toMatchObject({ port: 9000, host: '0.0.0.0' });
    expect(loadConfig(env, { httpPort: '0', httpHost: '::1' }).http).toMatchObject({ port: 0, host: '::1' });
    expect(refusal(env, { httpPort: '65536' })?.variable).toBe('--port');
    expect(refusal({ IMAGEGEN_HTTP_PORT: 'http' })?.variable).toBe('IMAGEGEN_HTTP_PORT');
    expect(refusal({}, { httpHost: ' ' })?.variable).toBe('--host');
  });

  it.each([
    ['IMAGEGEN_HTTP_BODY_LIMIT_BYTES', '1023', '1024'],
    ['IMAGEGEN_HTTP_RATE_LIMIT', '0', '1'],
    ['IMAGEGEN_HTTP_MAX_STREAMS_PER_TOKEN', '0', '1'],
    ['IMAGEGEN_HTTP_HEARTBEAT_MS', '0', '1'],
  ])('%s=%s is refused naming the variable; %s is accepted', (variable, refused, accepted) => {
    expect(refusal({ [variable]: refused })?.variable).toBe(variable);
    expect(refusal({ [variable]: accepted })).toBeNull();
  });

  it('IMAGEGEN_API_TOKENS: token=userId pairs, kept as SHA-256 hashes only', () => {
    const http = loadConfig({ IMAGEGEN_API_TOKENS: ` ${ALICE}=alice , ${BOB}=bob`, IMAGEGEN_ADMIN_TOKENS: ADMIN }).http;
    expect(http.tokens).toEqual([
      { sha256: tokenSha256(ALICE), userId: 'alice' },
      { sha256: tokenSha256(BOB), userId: 'bob' },
    ]);
    expect(http.adminTokens).toEqual([tokenSha256(ADMIN)]);
    expect(JSON.stringify(http)).not.toContain(ALICE);
  });

  it('@/path/file: one pair per line; blank lines and # comments skipped; admin tokens one per line', async () => {
    await writeFile(join(dir, 'tokens'), `# the team\n${ALICE}=alice\r\n\n${BOB}=bob\n`);
    await writeFile(join(dir, 'admins'), `${ADMIN}\n`);
    const http = loadConfig({ IMAGEGEN_API_TOKENS: `@${join(dir, 'tokens')}`, IMAGEGEN_ADMIN_TOKENS: `@${join(dir, 'admins')}` }).http;
    expect(http.tokens.map((t) => t.userId)).toEqual(['alice', 'bob']);
    expect(http.adminTokens).toEqual([tokenSha256(ADMIN)]);
  });

  it.each([
    ['no "="', `${ALICE}`, 'entry 1: expected token=userId'],
    ['a short token', 'short=alice', 'entry 1: a token must be 16 to 512 characters'],
    ['a token with a space', `${ALICE} x=alice`, 'a token must be'],
    ['an empty user', `${ALICE}=`, 'the user id must be 1 to 128 characters'],
    ['a trailing comma', `${ALICE}=alice,`, 'entry 2'],
    ['one token for two users', `${ALICE}=alice,${ALICE}=bob`, 'the same token is given to two users'],
  ])('IMAGEGEN_API_TOKENS with %s is refused naming the variable and the entry, never the token', (_what, value, message) => {
    const error = refusal({ IMAGEGEN_API_TOKENS: value });
    expect(error?.variable).toBe('IMAGEGEN_API_TOKENS');
    expect(error?.message).toContain(message);
    expect(error?.message).not.toContain(ALICE);
  });

  it('a token file that cannot be read is refused naming the variable and the path', () => {
    const error = refusal({ IMAGEGEN_API_TOKENS: `@${join(dir, 'missing')}` });
    expect(error?.variable).toBe('IMAGEGEN_API_TOKENS');
    expect(error?.message).toContain('ENOENT');
    expect(refusal({ IMAGEGEN_ADMIN_TOKENS: 'short' })?.variable).toBe('IMAGEGEN_ADMIN_TOKENS');
  });

  it('the configuration prints token counts, not their hashes', () => {
    const config = loadConfig({ IMAGEGEN_API_TOKENS: `${ALICE}=alice`, IMAGEGEN_ADMIN_TOKENS: ADMIN });
    for (const printed of [JSON.stringify(config), inspect(config, { depth: 10 })]) {
      expect(printed).not.toContain(tokenSha256(ALICE));
      expect(printed).not.toContain(tokenSha256(ADMIN));
      expect(printed).toContain('1 token(s)');
    }
  });
});
