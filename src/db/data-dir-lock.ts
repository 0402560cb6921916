import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { DataDirLockedError } from './errors.js';

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes `<lockFile>` for this process (O_EXCL create with our pid). A lock left by a
 * dead process (SIGKILL) is taken over. Returns the release function, which also takes back
 * the process `exit` listener that releases a lock still held when the process ends: a host
 * that opens and closes a data folder many times keeps no listener per opening.
 */
export function lockDataDir(lockFile: string): () => void {
  for (let tries = 0; tries < 3; tries++) {
    try {
      const fd = openSync(lockFile, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      let released = false;
      const release = () => {
        if (released) return;
        released = true;
        process.removeListener('exit', release);
        try {
          if (readFileSync(lockFile, 'utf8') === String(process.pid)) rmSync(lockFile, { force: true });
        } catch {
          // already gone
        }
      };
      process.once('exit', release);
      return release;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const pid = Number(readFileSync(lockFile, 'utf8'));
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) throw new DataDirLockedError(lockFile, pid);
      rmSync(lockFile, { force: true });
    }
  }
  throw new Error(`could not take the lock ${lockFile}`);
}
