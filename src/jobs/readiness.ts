import { defer, firstValueFrom, map, timeout } from 'rxjs';
import { pingDatabase } from '../db/index.js';
import type { SubmitDeps } from './submit-job.js';

/** Whether the service can do its work now: the database and the storage answered in time. */
export interface Readiness {
  readonly ready: boolean;
  readonly database: 'ok' | 'unavailable';
  readonly storage: 'ok' | 'unavailable';
}

/**
 * Asks the database (one round trip) and the storage (a listing of an empty prefix), at
 * once, each within `timeoutMs`: a probe must answer even when a dependency hangs.
 * `GET /readyz`.
 */
export async function checkReadiness(deps: SubmitDeps, options: { readonly timeoutMs: number }): Promise<Readiness> {
  const answers = (work: () => Promise<unknown>) =>
    firstValueFrom(defer(work).pipe(timeout(options.timeoutMs), map(() => 'ok' as const))).catch(() => 'unavailable' as const);
  const [database, storage] = await Promise.all([
    answers(() => pingDatabase(deps.database)),
    answers(() => firstValueFrom(deps.store.list('readyz/'), { defaultValue: [] })),
  ]);
  return { ready: database === 'ok' && storage === 'ok', database, storage };
}
