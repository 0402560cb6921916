import { closeSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
/** The embedded database is open in another live process. */
export class DataDirLockedError extends Error {
    lockFile;
    pid;
    name = 'DataDirLockedError';
    constructor(lockFile, pid) {
        super(`the embedded database is in use by process ${pid} (${lockFile}); PGlite serves one process at a time: ` +
            'wait for it, or set DATABASE_URL to share a PostgreSQL database between processes');
        this.lockFile = lockFile;
        this.pid = pid;
    }
}
function alive(pid) {
    try {
        process.kill(pid, 0);
        return true;
    }
    catch (error) {
        return error.code === 'EPERM';
    }
}
/**
 * Takes `<lockFile>` for this process (O_EXCL create with our pid). A lock left by a
 * dead process (SIGKILL) is taken over. Returns the release function.
 */
export function lockDataDir(lockFile) {
    for (let tries = 0; tries < 3; tries++) {
        try {
            const fd = openSync(lockFile, 'wx');
            writeSync(fd, String(process.pid));
            closeSync(fd);
            let released = false;
            const release = () => {
                if (released)
                    return;
                released = true;
                try {
                    if (readFileSync(lockFile, 'utf8') === String(process.pid))
                        rmSync(lockFile, { force: true });
                }
                catch {
                    // already gone
                }
            };
            process.once('exit', release);
            return release;
        }
        catch (error) {
            if (error.code !== 'EEXIST')
                throw error;
            const pid = Number(readFileSync(lockFile, 'utf8'));
            if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && alive(pid))
                throw new DataDirLockedError(lockFile, pid);
            rmSync(lockFile, { force: true });
        }
    }
    throw new Error(`could not take the lock ${lockFile}`);
}
