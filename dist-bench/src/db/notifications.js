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
 * The notification for an engine event, or null for `job:finished`: that one is
 * published by `finishJob` inside its transaction, so a watcher that sees it can
 * read the final state from the database.
 */
export function toNotifiedEvent(event) {
    switch (event.type) {
        case 'job:started':
            return { type: event.type, jobId: event.jobId, totalImages: event.totalImages, deliveredImages: event.deliveredImages };
        case 'attempt:started':
            return { type: event.type, jobId: event.jobId, stage: event.stage, slot: event.slot, attempt: event.attempt };
        case 'attempt:failed':
            return {
                type: event.type,
                jobId: event.jobId,
                stage: event.stage,
                slot: event.slot,
                attempt: event.attempt,
                errorClass: event.errorClass,
                httpStatus: event.httpStatus,
                message: event.message.slice(0, MAX_MESSAGE_CHARS),
                willRetry: event.willRetry,
                delayMs: event.delayMs,
            };
        case 'slot:delivered':
            return {
                type: event.type,
                jobId: event.jobId,
                stage: event.stage,
                slot: event.slot,
                attempt: event.attempt,
                attachId: event.attachId,
                stageDelivered: event.stageProgress.delivered,
                stageTotal: event.stageProgress.total,
                delivered: event.progress.delivered,
                total: event.progress.total,
            };
        case 'stage:completed':
            return { type: event.type, jobId: event.jobId, stage: event.stage, quantity: event.quantity, delivered: event.delivered };
        case 'stage:short':
            return {
                type: event.type,
                jobId: event.jobId,
                stage: event.stage,
                quantity: event.quantity,
                delivered: event.delivered,
                reason: event.reason,
                errorClass: event.errorClass,
            };
        case 'job:finished':
            return null;
    }
}
/** JSON payload for NOTIFY; throws if it would not fit (it cannot, with the fields above, unless ids are huge). */
export function encodeNotification(event) {
    const payload = JSON.stringify(event);
    if (Buffer.byteLength(payload, 'utf8') > MAX_NOTIFY_PAYLOAD_BYTES) {
        throw new RangeError(`notification for ${event.type} of job ${event.jobId} exceeds ${MAX_NOTIFY_PAYLOAD_BYTES} bytes`);
    }
    return payload;
}
/** Parses a payload from {@link PROGRESS_CHANNEL}; null for anything that is not one of ours. */
export function decodeNotification(payload) {
    try {
        const value = JSON.parse(payload);
        if (typeof value !== 'object' || value === null)
            return null;
        const { type, jobId } = value;
        if (typeof type !== 'string' || typeof jobId !== 'string')
            return null;
        return value;
    }
    catch {
        return null;
    }
}
