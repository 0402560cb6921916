import { Observable } from 'rxjs';
import { JobNotFoundError } from '../db/errors.js';
import { decodeNotification, PROGRESS_CHANNEL } from '../db/notifications.js';
import { FINAL_JOB_STATUSES } from '../db/schema.js';
/**
 * Watches a job from any process that can reach its database.
 *
 * Emits a {@link JobSnapshot} read from the database, then every progress
 * notification of the job (LISTEN on the progress channel) in the order
 * published, and completes after `job:finished`, or right after the snapshot
 * when the job has already ended. Errors with {@link JobNotFoundError} for an
 * unknown job.
 *
 * LISTEN starts before the snapshot is read, so nothing published in between
 * is lost; notifications that arrive before the snapshot is emitted are held
 * back, and a `slot:delivered` the snapshot already holds is dropped.
 *
 * Cold: each subscription LISTENs on its own (PostgreSQL: its own connection)
 * and stops listening when it completes, errors or is unsubscribed.
 *
 * ```
 * db:       (snapshot) --- d5 --- d6 --- finished
 * output:   s ------------ d5 --- d6 --- f|
 * ```
 */
export function watchJob(database, jobId) {
    return new Observable((subscriber) => {
        let stop = null;
        let closed = false;
        let snapshotSent = false;
        let seen = new Set();
        const early = [];
        const release = () => {
            const s = stop;
            stop = null;
            // Unlisten errors are not the watcher's business once it is done.
            if (s)
                void s().catch(() => { });
        };
        const deliver = (event) => {
            if (event.type === 'slot:delivered') {
                if (seen.has(event.attachId))
                    return;
                seen.add(event.attachId);
            }
            subscriber.next(event);
            if (event.type === 'job:finished')
                subscriber.complete();
        };
        (async () => {
            const unlisten = await database.listen(PROGRESS_CHANNEL, (payload) => {
                const event = decodeNotification(payload);
                if (event === null || event.jobId !== jobId || subscriber.closed)
                    return;
                if (snapshotSent)
                    deliver(event);
                else
                    early.push(event);
            });
            if (closed) {
                await unlisten();
                return;
            }
            stop = unlisten;
            const snapshot = await readSnapshot(database, jobId);
            if (subscriber.closed)
                return;
            if (snapshot === null) {
                subscriber.error(new JobNotFoundError(jobId));
                return;
            }
            seen = new Set(snapshot.attachIds);
            snapshotSent = true;
            subscriber.next(snapshot);
            if (FINAL_JOB_STATUSES.includes(snapshot.status)) {
                subscriber.complete();
                return;
            }
            for (const event of early.splice(0)) {
                if (subscriber.closed)
                    break;
                deliver(event);
            }
        })().catch((error) => subscriber.error(error));
        return () => {
            closed = true;
            release();
        };
    });
}
/** Reads the job, its stages and its committed deliveries (delivery order). */
export async function readSnapshot(database, jobId) {
    // One repeatable-read transaction: job counters, stages and the id list are
    // one consistent picture, not three reads with deliveries in between.
    return database.db.transaction().setIsolationLevel('repeatable read').execute(async (db) => {
        const job = await db
            .selectFrom('jobs')
            .select(['status', 'total', 'delivered', 'cancel_requested'])
            .where('id', '=', jobId)
            .executeTakeFirst();
        if (!job)
            return null;
        const stages = await db
            .selectFrom('stages')
            .select(['stage_index', 'quantity', 'delivered', 'status'])
            .where('job_id', '=', jobId)
            .orderBy('stage_index')
            .execute();
        const attachments = await db.selectFrom('attachments').select('id').where('job_id', '=', jobId).orderBy('seq').execute();
        return {
            type: 'snapshot',
            jobId,
            status: job.status,
            total: job.total,
            delivered: job.delivered,
            attachIds: attachments.map((a) => a.id),
            cancelRequested: job.cancel_requested,
            stages: stages.map((s) => ({ index: s.stage_index, quantity: s.quantity, delivered: s.delivered, status: s.status })),
        };
    });
}
