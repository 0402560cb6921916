import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { firstValueFrom } from 'rxjs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FolderObjectStore } from '../../src/sinks/folder-object-store.js';

describe('FolderObjectStore.removeIncomplete', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(join(tmpdir(), 'imagegen-incomplete-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('removes the temp files a killed put left under the prefix, and nothing else', async () => {
    const store = new FolderObjectStore({ root });
    await firstValueFrom(store.put('generated/j1/0/0-1.webp', new Uint8Array([1]), 'image/webp'), { defaultValue: undefined });
    await firstValueFrom(store.put('generated/j2/0/0-1.webp', new Uint8Array([1]), 'image/webp'), { defaultValue: undefined });
    await writeFile(join(root, 'generated/j1/0/.tmp-dead1'), 'x');
    await mkdir(join(root, 'generated/j1/1'), { recursive: true });
    await writeFile(join(root, 'generated/j1/1/.tmp-dead2'), 'x');
    await writeFile(join(root, 'generated/j2/0/.tmp-other-job'), 'x');

    expect(await firstValueFrom(store.removeIncomplete('generated/j1/'))).toBe(2);
    expect(await readdir(join(root, 'generated/j1/0'))).toEqual(['0-1.webp']);
    expect(await readdir(join(root, 'generated/j1/1'))).toEqual([]);
    expect((await readdir(join(root, 'generated/j2/0'))).sort()).toEqual(['.tmp-other-job', '0-1.webp']);
    expect(await firstValueFrom(store.list('generated/'))).toEqual(['generated/j1/0/0-1.webp', 'generated/j2/0/0-1.webp']);
  });

  it('is zero for a prefix with nothing under it', async () => {
    const store = new FolderObjectStore({ root });
    expect(await firstValueFrom(store.removeIncomplete('generated/none/'))).toBe(0);
  });
});
