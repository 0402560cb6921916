import { isErrorClass } from '../domain/error-class.js';
import type {
  AttemptFailedEvent,
  AttemptStartedEvent,
  JobFinishedEvent,
  JobStartedEvent,
  PipelineEvent,
  Progress,
  SlotDeliveredEvent,
  StageCompletedEvent,
  StageShortEvent,
} from '../domain/events.js';
import type { JobResult } from '../domain/result.js';
import { isJobStatus, isShortfallReason } from './internal/domain-values.js';

/**
 * The one NOTIFY channel progress travels on. The job id is in the payload, not
 * in the channel name: channel names are identifiers (at most 63 bytes) and job
 * ids may be 64 characters.
 */
export const PROGRESS_CHANNEL = 'imagegen_progress';

/** PostgreSQL refuses NOTIFY payloads of 8000 bytes or more. */
export const MAX_NOTIFY_PAYLOAD_BYTES = 7999;

const MAX_MESSAGE_CHARS = 300;

/**
 * The part of a domain event that crosses processes: `type`, `jobId` and the fields
 * `K`, under the domain's own names and types. Never `at` (the publishing engine's
 * scheduler clock means nothing to another process), never images or usage.
 */
type Notified<E extends PipelineEvent, K extends keyof E> = Pick<E, 'type' | 'jobId' | K>;

/** `job:started` as published (no per-stage list). */
export type JobStartedNotification = Notified<JobStartedEvent, 'totalImages' | 'deliveredImages'>;
export type AttemptStartedNotification = Notified<AttemptStartedEvent, 'stage' | 'slot' | 'attempt'>;
/** `attempt:failed` as published; `message` cut to 300 characters. */
export type AttemptFailedNotification = Notified<
  AttemptFailedEvent,
  'stage' | 'slot' | 'attempt' | 'errorClass' | 'httpStatus' | 'message' | 'willRetry' | 'delayMs'
>;
export type SlotDeliveredNotification = Notified<SlotDeliveredEvent, 'stage' | 'slot' | 'attempt' | 'attachId' | 'stageProgress' | 'progress'>;
export type StageCompletedNotification = Notified<StageCompletedEvent, 'stage' | 'quantity' | 'delivered'>;
export type StageShortNotification = Notified<StageShortEvent, 'stage' | 'quantity' | 'delivered' | 'reason' | 'errorClass'>;
/** `job:finished` as `finishJob` publishes it: the counts of its result, never the attach id list. */
export type JobFinishedNotification = Notified<JobFinishedEvent, 'status'> & {
  readonly result: Pick<JobResult, 'totalImages' | 'deliveredImages'>;
};
/** Published by `requestCancel`; not an engine event. */
export interface JobCancelRequestedNotification {
  readonly type: 'job:cancel-requested';
  readonly jobId: string;
}

/**
 * What crosses process boundaries: ids and counts only, never images, never the
 * whole attach id list. Each member is its domain event narrowed to these fields, so
 * a host's handler reads `event.progress.delivered` the same way on the events of
 * `runJob` and on those of `watchJob`.
 */
export type NotifiedEvent =
  | JobStartedNotification
  | AttemptStartedNotification
  | AttemptFailedNotification
  | SlotDeliveredNotification
  | StageCompletedNotification
  | StageShortNotification
  | JobFinishedNotification
  | JobCancelRequestedNotification;

/**
 * The notification for an engine event, or null for `job:finished`: that one is
 * published by `finishJob` inside its transaction, so a watcher that sees it can
 * read the final state from the database.
 */
export function toNotifiedEvent(event: PipelineEvent): NotifiedEvent | null {
  const { jobId } = event;
  switch (event.type) {
    case 'job:started':
      return { type: event.type, jobId, totalImages: event.totalImages, deliveredImages: event.deliveredImages };
    case 'attempt:started':
      return { type: event.type, jobId, stage: event.stage, slot: event.slot, attempt: event.attempt };
    case 'attempt:failed':
      return attemptFailedNotification(event);
    case 'slot:delivered': {
      const { stage, slot, attempt, attachId, stageProgress, progress } = event;
      return { type: event.type, jobId, stage, slot, attempt, attachId, stageProgress: countsOf(stageProgress), progress: countsOf(progress) };
    }
    case 'stage:completed':
      return { type: event.type, jobId, stage: event.stage, quantity: event.quantity, delivered: event.delivered };
    case 'stage:short':
      return { type: event.type, jobId, stage: event.stage, quantity: event.quantity, delivered: event.delivered, reason: event.reason, errorClass: event.errorClass };
    case 'job:finished':
      return null;
  }
}

/** `attempt:failed` as published and as logged (`finishAttempt`): {@link toNotifiedEvent} of a failure. */
export function attemptFailedNotification(event: AttemptFailedEvent): AttemptFailedNotification {
  const { jobId, stage, slot, attempt, errorClass, httpStatus, willRetry, delayMs } = event;
  return { type: event.type, jobId, stage, slot, attempt, errorClass, httpStatus, message: event.message.slice(0, MAX_MESSAGE_CHARS), willRetry, delayMs };
}

function countsOf(progress: Progress): Progress {
  return { delivered: progress.delivered, total: progress.total };
}

/** JSON payload for NOTIFY; throws if it would not fit (it cannot, with the fields above, unless ids are huge). */
export function encodeNotification(event: NotifiedEvent): string {
  const payload = JSON.stringify(event);
  if (Buffer.byteLength(payload, 'utf8') > MAX_NOTIFY_PAYLOAD_BYTES) {
    throw new RangeError(`notification for ${event.type} of job ${event.jobId} exceeds ${MAX_NOTIFY_PAYLOAD_BYTES} bytes`);
  }
  return payload;
}

type Guard<T> = (value: unknown) => value is T;

/** Per notification type, a check for each of its fields but `type`: the table the compiler holds to {@link NotifiedEvent}. */
type FieldGuards = {
  readonly [T in NotifiedEvent['type']]: {
    readonly [K in Exclude<keyof Extract<NotifiedEvent, { type: T }>, 'type'>]-?: Guard<Extract<NotifiedEvent, { type: T }>[K]>;
  };
};

const isRecord = (value: unknown): value is Readonly<Record<string, unknown>> => typeof value === 'object' && value !== null && !Array.isArray(value);
const isString = (value: unknown): value is string => typeof value === 'string';
const isBoolean = (value: unknown): value is boolean => typeof value === 'boolean';
const isCount = (value: unknown): value is number => Number.isSafeInteger(value) && (value as number) >= 0;
const isDelay = (value: unknown): value is number => typeof value === 'number' && Number.isFinite(value) && value >= 0;
const isHttpStatus = (value: unknown): value is number | null => value === null || Number.isSafeInteger(value);
const isProgress = (value: unknown): value is Progress => isRecord(value) && isCount(value['delivered']) && isCount(value['total']);
const isResultCounts = (value: unknown): value is JobFinishedNotification['result'] =>
  isRecord(value) && isCount(value['totalImages']) && isCount(value['deliveredImages']);
const orNull =
  <T>(guard: Guard<T>): Guard<T | null> =>
  (value: unknown): value is T | null =>
    value === null || guard(value);

const slotFields = { jobId: isString, stage: isCount, slot: isCount, attempt: isCount } as const;
const stageFields = { jobId: isString, stage: isCount, quantity: isCount, delivered: isCount } as const;

const FIELD_GUARDS: FieldGuards = {
  'job:started': { jobId: isString, totalImages: isCount, deliveredImages: isCount },
  'attempt:started': slotFields,
  'attempt:failed': { ...slotFields, errorClass: isErrorClass, httpStatus: isHttpStatus, message: isString, willRetry: isBoolean, delayMs: isDelay },
  'slot:delivered': { ...slotFields, attachId: isString, stageProgress: isProgress, progress: isProgress },
  'stage:completed': stageFields,
  'stage:short': { ...stageFields, reason: isShortfallReason, errorClass: orNull(isErrorClass) },
  'job:finished': { jobId: isString, status: isJobStatus, result: isResultCounts },
  'job:cancel-requested': { jobId: isString },
};

/**
 * Parses and checks a payload from {@link PROGRESS_CHANNEL}: the notification, with
 * exactly the fields of its type, or null when the payload is not JSON, names no
 * known type, or misses or mistypes a field (a malformed or foreign payload, or one
 * from a version that publishes another shape). Callers skip null and say so.
 */
export function decodeNotification(payload: string): NotifiedEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  return checkNotification(value);
}

/**
 * {@link decodeNotification} of a value already parsed (a `job_events.payload` read back
 * from jsonb): the notification with exactly the fields of its type, or null.
 */
export function checkNotification(value: unknown): NotifiedEvent | null {
  if (!isRecord(value) || !isString(value['type']) || !Object.hasOwn(FIELD_GUARDS, value['type'])) return null;
  const guards: Readonly<Record<string, Guard<unknown>>> = FIELD_GUARDS[value['type'] as NotifiedEvent['type']];
  const event: Record<string, unknown> = { type: value['type'] };
  for (const [field, guard] of Object.entries(guards)) {
    if (!guard(value[field])) return null;
    event[field] = value[field];
  }
  // Every field of this type was checked by its guard above; FieldGuards ties the table to the type.
  return event as unknown as NotifiedEvent;
}

/**
 * The channel that says a job's event log (`job_events`) grew: published by every
 * append, inside the transaction that commits the events (`deliverSlot`,
 * `finishAttempt`, `finishJob`, `requestCancel`), so it is delivered only once they
 * are readable. The payload is only `{ jobId, seq }` (the last number appended): a
 * follower re-reads the table, it never takes events from the payload.
 *
 * Not {@link PROGRESS_CHANNEL}: there the progress writer publishes `slot:delivered`,
 * `attempt:failed` and the stage ends from the engine's events, outside those
 * transactions and without their numbers. Publishing the appends there too would
 * send two notifications per event to every `watchJob`; following the writer's instead
 * would wake a follower before the row it announces has committed (an
 * `attempt:failed` notification races its attempt log write) or long before it exists
 * (a stage's end is logged by `finishJob`).
 */
export const JOB_EVENTS_CHANNEL = 'imagegen_job_events';

/** The payload of {@link JOB_EVENTS_CHANNEL}: job `jobId` has events up to `seq` committed. */
export interface JobEventsAppended {
  readonly jobId: string;
  readonly seq: number;
}

/** JSON payload for {@link JOB_EVENTS_CHANNEL}; throws if it would not fit (a job id of thousands of characters). */
export function encodeJobEventsAppended(appended: JobEventsAppended): string {
  const payload = JSON.stringify({ jobId: appended.jobId, seq: appended.seq });
  if (Buffer.byteLength(payload, 'utf8') > MAX_NOTIFY_PAYLOAD_BYTES) {
    throw new RangeError(`job events notification of job ${appended.jobId} exceeds ${MAX_NOTIFY_PAYLOAD_BYTES} bytes`);
  }
  return payload;
}

/**
 * {@link encodeJobEventsAppended}'s payload up to its number, for SQL that appends the
 * number it takes and the closing brace (`prefix || seq || '}'`): the same bytes.
 */
export function jobEventsAppendedPrefix(jobId: string): string {
  const full = encodeJobEventsAppended({ jobId, seq: Number.MAX_SAFE_INTEGER });
  return full.slice(0, full.length - `${Number.MAX_SAFE_INTEGER}}`.length);
}

/** Parses and checks a {@link JOB_EVENTS_CHANNEL} payload; null when it is not one (skip it). */
export function decodeJobEventsAppended(payload: string): JobEventsAppended | null {
  let value: unknown;
  try {
    value = JSON.parse(payload);
  } catch {
    return null;
  }
  if (!isRecord(value) || !isString(value['jobId']) || !isCount(value['seq'])) return null;
  return { jobId: value['jobId'], seq: value['seq'] };
}
