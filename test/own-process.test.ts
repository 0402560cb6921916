/**
 * What the project's own programs set for their process (src/cli/own-process.ts): V8's old
 * generation kept within 1.5x of its live size unless node was started with `--heap-growing-percent`.
 * The effect on memory is a benchmark figure (BENCHMARKS.md 11C), not a verdict here; this
 * checks who decides. The setter runs in child processes, so this test process's own V8
 * flags stay as they are.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { nodeFlagGiven } from '../src/cli/own-process.js';
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
