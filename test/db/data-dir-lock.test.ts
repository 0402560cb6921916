/**
 * The embedded database's folder lock (`lockDataDir`, src/db/data-dir-lock.ts): one process
 * at a time, a dead holder's lock taken over, and a release that leaves nothing behind, not
 * even the process `exit` listener (a host opening and closing a data folder many times
 * once collected one listener per opening, and Node's MaxListenersExceededWarning with them).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DataDirLockedError, lockDataDir } from '../../src/db/index.js';
import { cliEntry } from '../support/cli-entry.js';

describe('lockDataDir', () => {
  let dir: string;
  let lockFile: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'imagegen-lock-'));
    lockFile = join(dir, 'db.lock');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes our pid; a second taker is refused naming the holder; the release removes the file', () => {
    const release = lockDataDir(lockFile);
    expect(readFileSync(lockFile, 'utf8')).toBe(String(process.pid));
    // Held by another live process (our parent, say): refused, naming it.
    const takeAgain = () => lockDataDir(lockFile);
    writeFileSync(lockFile, String(process.ppid));
    expect(takeAgain).toThrow(DataDirLockedError);
    expect(takeAgain).toThrow(`in use by process ${process.ppid}`);
    // Ours again: released, the file goes.
    writeFileSync(lockFile, String(process.pid));
    release();
    expect(existsSync(lockFile)).toBe(false);
    // A release leaves another process's lock in place (it is not ours any more).
    const again = lockDataDir(lockFile);
    writeFileSync(lockFile, String(process.ppid));
    again();
    expect(readFileSync(lockFile, 'utf8')).toBe(String(process.ppid));
  });

  it('takes over a lock whose process is dead (SIGKILL left it behind)', () => {
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    writeFileSync(lockFile, dead.stdout);
    const release = lockDataDir(lockFile);
    expect(readFileSync(lockFile, 'utf8')).toBe(String(process.pid));
    release();
  });

  it('keeps one exit listener per lock held, and none once released: 25 openings leave the count as it was', () => {
    const before = process.listenerCount('exit');
    const held = lockDataDir(lockFile);
    expect(process.listenerCount('exit')).toBe(before + 1);
    held();
    expect(process.listenerCount('exit')).toBe(before);
    for (let i = 0; i < 25; i++) {
      const release = lockDataDir(lockFile);
      release();
      release(); // twice: a no-op
    }
    expect(process.listenerCount('exit')).toBe(before);
  });

  it('a lock still held when the process ends is released by it', { timeout: 120_000 }, async () => {
    // The harness's build of src/ (compiled once per source state).
    const module = JSON.stringify(pathToFileURL(join(await cliEntry(), '..', 'db', 'data-dir-lock.js')).href);
    // The child takes the lock and exits without releasing it; its exit listener removes the file.
    const child = spawnSync(process.execPath, ['--input-type=module', '-e', `const { lockDataDir } = await import(${module}); lockDataDir(${JSON.stringify(lockFile)}); process.stdout.write('held');`], { encoding: 'utf8' });
    expect(child.stdout, child.stderr).toBe('held');
    expect(existsSync(lockFile)).toBe(false);
  });
});
