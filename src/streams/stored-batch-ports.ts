import { EMPTY, catchError, concatMap, defer, from, map, mergeMap, of, switchMap, take, tap, throwError, type Observable } from 'rxjs';
import type { Logger } from 'pino';
import { toPipelineError } from '../domain/error-class.js';
import type { StageSpec } from '../domain/job-spec.js';
import { batchRequestKey, type AttemptRequest, type BatchGenerator, type BatchRound, type BatchStagePorts, type InputImage } from '../domain/ports.js';
import { isTransientDatabaseError, recordBatchRound, recordBatchState, setBatchName, type Database, type StoredBatch } from '../db/index.js';
import { retryWhileTransient } from '../operators/retry-while-transient.js';
import type { OpenBatch } from '../operators/fill-batch-rounds.js';
import type { ObjectStore } from '../sinks/object-store.js';
import { deliverImage, type RunLease } from '../sinks/deliver-image.js';
import type { StoredPortsOptions } from './stored-ports.js';

/** The real parts behind a batch stage's ports. */
export interface StoredBatchPortsDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly batches: BatchGenerator;
  /** Per stage, its input image (`stageInputs`, shared with the interactive ports). */
  readonly inputs: readonly Observable<InputImage | null>[];
  readonly logger?: Logger | undefined;
  readonly lease?: RunLease | undefined;
}

/**
 * The key a batch round is known by at the provider (its display name): one per
 * `(job, stage, round)`, stored before the create call, so a run that takes the job over
 * finds the batch again when the create's answer was lost.
 */
export function batchDisplayName(jobId: string, stageIndex: number, round: number): string {
  return `imagegen/${jobId}/${stageIndex}/${round}`;
}

/**
 * Binds a batch stage's ports ({@link BatchStagePorts}) to the database, the object store
 * and the provider's batch API:
 *
 * - `submit` = record the round (`recordBatchRound`: its attempts `started`, the batch row
 *   under its display name, in one transaction, BEFORE the provider is called) → the
 *   stage's input image → `createBatch` → the provider's name stored (`setBatchName`).
 *   A resumed round first looks its batch up by the display name (`findBatch`): a create
 *   whose answer was lost is not sent twice. A create that failed without an answer (a
 *   network error, a timeout, a 5xx) is looked up the same way before it counts as failed.
 * - `poll` = `getBatch`, its state recorded on the round's row (`recordBatchState`).
 * - `cancel` = `cancelBatch` (a round without a name yet: its batch found by the display
 *   name first), and the round's row marked `cancelled`.
 * - `deliver` = the interactive delivery ({@link deliverImage}): exactly once per slot.
 *
 * ```
 * submit  record──input──(find)──create──name stored──n|
 * poll    get──state stored──s|
 * ```
 */
export function storedBatchPorts(deps: StoredBatchPortsDeps, jobId: string, options: StoredPortsOptions = {}): BatchStagePorts {
  const { database, batches, logger } = deps;
  const waitForDatabase = <T>(what: string) =>
    retryWhileTransient<T>({
      isTransient: isTransientDatabaseError,
      onRetry: (error, retry, delayMs) => logger?.warn({ err: error, retry, delayMs }, `${what} waits for the database`),
    });
  const keyOf = (round: BatchRound) => ({ jobId, stageIndex: round.stageIndex, round: round.round });
  /** The provider's batch for this round, when a create reached it (null: none). */
  const find = (displayName: string): Observable<string | null> => batches.findBatch(displayName).pipe(catchError(() => of(null)));

  const create = (round: BatchRound, stored: StoredBatch): Observable<string> =>
    deps.inputs[round.stageIndex]!.pipe(
      take(1),
      catchError((e: unknown) => throwError(() => toPipelineError(e, 'storage'))),
      map((input) => round.requests.map((request: AttemptRequest) => ({ key: batchRequestKey(request), request: { ...request, input } }))),
      switchMap((requests) =>
        batches.createBatch(stored.displayName, requests).pipe(
          catchError((error: unknown) => {
            const e = toPipelineError(error, 'network');
            // No answer does not mean no batch: look before calling it failed.
            if (e.errorClass !== 'network' && e.errorClass !== 'timeout' && e.errorClass !== 'overloaded') return throwError(() => e);
            return find(stored.displayName).pipe(mergeMap((name) => (name !== null ? of(name) : throwError(() => e))));
          }),
        ),
      ),
    );

  return {
    submit: (round) =>
      defer(() =>
        recordBatchRound(database, {
          ...keyOf(round),
          displayName: batchDisplayName(jobId, round.stageIndex, round.round),
          requests: round.requests.map((r) => ({ slot: r.slotIndex, attempt: r.attempt })),
        }),
      ).pipe(
        waitForDatabase('a batch round'),
        catchError((e: unknown) => throwError(() => toPipelineError(e, 'database'))),
        switchMap((stored) => {
          if (stored.name !== null) return of(stored.name);
          const existing$ = round.resumed === true ? find(stored.displayName) : of(null);
          return existing$.pipe(switchMap((name) => (name !== null ? of(name) : create(round, stored))));
        }),
        concatMap((name) =>
          defer(() => setBatchName(database, keyOf(round), name)).pipe(
            waitForDatabase('the batch name'),
            map(() => name),
          ),
        ),
        tap((name) => logger?.info({ stage: round.stageIndex, round: round.round, batch: name, requests: round.requests.length }, 'batch sent')),
      ),
    poll: (name, round) =>
      batches.getBatch(name).pipe(
        concatMap((status) =>
          from(recordBatchState(database, keyOf(round), status.state, status.error ?? null)).pipe(
            catchError((error: unknown) => {
              // The record is for the summary; the batch's answers matter more than it.
              logger?.warn({ err: error, batch: name }, 'could not record the batch state');
              return of(undefined);
            }),
            map(() => status),
          ),
        ),
      ),
    cancel: (name, round) =>
      (name !== null ? of<string | null>(name) : find(batchDisplayName(jobId, round.stageIndex, round.round))).pipe(
        mergeMap((found) => (found === null ? EMPTY : batches.cancelBatch(found))),
        // The summary's round says so (a batch that had ended keeps its state: a terminal state is final).
        concatMap(() => from(recordBatchState(database, keyOf(round), 'cancelled', 'cancelled with the job')).pipe(catchError(() => of(undefined)))),
        map(() => undefined),
      ),
    deliver: (request, image) => deliverImage(deps, request, image, options),
  };
}

/** The open batch of each stage (the latest round with attempts still out), for the engine's `openBatches`. */
export function openBatchesByStage(stages: readonly StageSpec[], open: readonly StoredBatch[], requestOf: (stage: StageSpec, slot: number, attempt: number) => AttemptRequest): (OpenBatch | undefined)[] {
  return stages.map((stage) => {
    const latest = open.filter((b) => b.stageIndex === stage.index).at(-1);
    if (latest === undefined) return undefined;
    return { round: latest.round, name: latest.name, requests: latest.requests.map((r) => requestOf(stage, r.slot, r.attempt)) };
  });
}
