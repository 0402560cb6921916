/**
 * What the project's own programs set for their process (src/cli/own-process.ts): V8's old
 * generation kept within 1.5x of its live size unless node was started with `--heap-growing-percent`,
 * and the AWS SDK's Node-version notice off unless the user set its variable.
 * The effect on memory is a benchmark figure (BENCHMARKS.md 11C), not a verdict here; this
 * checks who decides. The setter runs in child processes, so this test process's own V8
 * flags stay as they are.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { nodeFlagGiven } from '../src/cli/own-process.js';
import { AWS_SDK_NODE_NOTICE_SWITCH, quietAwsSdkNodeNotice } from '../src/config.js';
import { cliEntry } from './support/cli-entry.js';

describe('nodeFlagGiven: a flag node was started with', () => {
  it.each([
    ['given', ['--heap-growing-percent=20'], true],
    ['given, V8 spelling', ['--expose-gc', '--heap_growing_percent=20'], true],
    ['not given', ['--expose-gc'], false],
    ['a longer flag with the same start', ['--heap-growing-percent-x=3'], false],
    ['no flags', [], false],
  ] as const)('%s', (_, execArgv, expected) => {
    expect(nodeFlagGiven('heap-growing-percent', execArgv)).toBe(expected);
  });
});

describe('keepOldGenerationTight (run by the CLI and the demo at start)', () => {
  /** Runs `keepOldGenerationTight()` of the harness's build in a fresh node, with `nodeArgs` and `env`. */
  async function runIn(nodeArgs: string[], env: Record<string, string>): Promise<{ set: boolean; stderr: string; status: number | null }> {
    const module = pathToFileURL(join(await cliEntry(), '..', 'cli', 'own-process.js')).href;
    const script = `const m = await import(${JSON.stringify(module)}); process.stdout.write(JSON.stringify({ set: m.keepOldGenerationTight(), percent: m.HEAP_GROWING_PERCENT }));`;
    const out = spawnSync(process.execPath, [...nodeArgs, '--input-type=module', '-e', script], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '', ...env } });
    const parsed = out.status === 0 ? (JSON.parse(out.stdout) as { set: boolean; percent: number }) : { set: false, percent: 0 };
    if (out.status === 0) expect(parsed.percent).toBe(50);
    return { set: parsed.set, stderr: out.stderr, status: out.status };
  }

  it('sets it when node was started without the flag; leaves the user\'s value when started with it', { timeout: 120_000 }, async () => {
    const plain = await runIn([], {});
    expect(plain.status, plain.stderr).toBe(0);
    expect(plain.set).toBe(true);
    const onCommandLine = await runIn(['--heap-growing-percent=20'], {});
    expect(onCommandLine.status, onCommandLine.stderr).toBe(0);
    expect(onCommandLine.set).toBe(false);
    const v8Spelling = await runIn(['--heap_growing_percent=20'], {});
    expect(v8Spelling.status, v8Spelling.stderr).toBe(0);
    expect(v8Spelling.set).toBe(false);
  });
});

describe('wasmBaselineOnly (run by the CLI and the demo before a command opens its database)', () => {
  /** Calls `wasmBaselineOnly(opening)` of the harness's build in a fresh node, then compiles and runs a WASM function. */
  async function runIn(nodeArgs: string[], opening: { embedded: boolean }): Promise<{ set: boolean; sum: number; stderr: string; status: number | null }> {
    const module = pathToFileURL(join(await cliEntry(), '..', 'cli', 'own-process.js')).href;
    // (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))
    const wasm = [0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1, 3, 97, 100, 100, 0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11];
    const script = [
      `const m = await import(${JSON.stringify(module)});`,
      `const set = m.wasmBaselineOnly(${JSON.stringify(opening)});`,
      `const { instance } = await WebAssembly.instantiate(new Uint8Array(${JSON.stringify(wasm)}));`,
      'process.stdout.write(JSON.stringify({ set, sum: instance.exports.add(2, 3) }));',
    ].join('\n');
    const out = spawnSync(process.execPath, [...nodeArgs, '--input-type=module', '-e', script], { encoding: 'utf8', env: { PATH: process.env['PATH'] ?? '' } });
    const parsed = out.status === 0 ? (JSON.parse(out.stdout) as { set: boolean; sum: number }) : { set: false, sum: 0 };
    return { ...parsed, stderr: out.stderr, status: out.status };
  }

  it.each([
    ['the embedded database: set', [], { embedded: true }, true],
    ['PostgreSQL (no WASM of ours in this process): left alone', [], { embedded: false }, false],
    ['node started with --liftoff-only: the user decided', ['--liftoff-only'], { embedded: true }, false],
    ['node started with --no-liftoff-only: the user decided', ['--no-liftoff-only'], { embedded: true }, false],
  ] as const)('%s', { timeout: 60_000 }, async (_, nodeArgs, opening, expected) => {
    const result = await runIn([...nodeArgs], opening);
    expect(result.status, result.stderr).toBe(0);
    expect(result.set).toBe(expected);
    // WASM compiles and runs after the flag, as PGlite's does.
    expect(result.sum).toBe(5);
  });
});

describe("quietAwsSdkNodeNotice (run by the CLI and the demo at start): the AWS SDK's Node-version notice", () => {
  it('turns it off when the variable is unset; a value the user set (even empty, even false) wins', () => {
    const unset: NodeJS.ProcessEnv = { PATH: '/bin' };
    expect(quietAwsSdkNodeNotice(unset)).toBe(true);
    expect(unset).toEqual({ PATH: '/bin', [AWS_SDK_NODE_NOTICE_SWITCH]: 'true' });
    for (const given of ['false', '', 'true']) {
      const env: NodeJS.ProcessEnv = { [AWS_SDK_NODE_NOTICE_SWITCH]: given };
      expect(quietAwsSdkNodeNotice(env)).toBe(false);
      expect(env[AWS_SDK_NODE_NOTICE_SWITCH]).toBe(given);
    }
  });
});
