import { randomBytes } from 'node:crypto';
import type { JobSpec, StageSpec } from '../../src/domain/job-spec.js';
import type { JobResult, StageResult } from '../../src/domain/result.js';
import { jobStatusOf } from '../../src/domain/result.js';
import type { Database } from '../../src/db/database.js';
import { createAttachment } from '../../src/db/ops/create-attachment.js';
import { grantCredits } from '../../src/db/ops/grant-credits.js';
import { submitJob } from '../../src/db/ops/submit-job.js';
import { loadJob } from '../../src/db/ops/load-job.js';

/** A fresh id, so tests sharing one database never collide. */
export function uid(prefix: string): string {
  return `${prefix}_${randomBytes(5).toString('hex')}`;
}

export async function inputAttachment(database: Database, userId: string): Promise<string> {
  const { attachId } = await createAttachment(database, {
    userId,
    storageKey: `inputs/${uid('in')}.webp`,
    contentType: 'image/webp',
    byteSize: 1234,
    width: 64,
    height: 36,
  });
  return attachId;
}

export function makeSpec(userId: string, quantities: readonly number[], inputAttachId: string | null, jobId = uid('job')): JobSpec {
  const stages: StageSpec[] = quantities.map((quantity, index) => ({
    index,
    prompt: `stage ${index} prompt`,
    aspectRatio: '16:9',
    quantity,
    inputAttachId,
    inputImage: null,
  }));
  return { jobId, userId, productionId: 'prod-1', stages };
}

/** A user with `credits`, an input attachment, and a submitted job of `quantities`. */
export async function seedJob(
  database: Database,
  options: { quantities: readonly number[]; pricePerImage?: number; credits?: number },
): Promise<{ userId: string; jobId: string; spec: JobSpec; inputId: string }> {
  const userId = uid('user');
  const price = options.pricePerImage ?? 10;
  const total = options.quantities.reduce((a, b) => a + b, 0);
  await grantCredits(database, userId, options.credits ?? price * total + 1);
  const inputId = await inputAttachment(database, userId);
  const spec = makeSpec(userId, options.quantities, inputId);
  const { jobId } = await submitJob(database, { spec, pricePerImage: price });
  return { userId, jobId, spec, inputId };
}

export function deliveryOf(jobId: string, stageIndex: number, slotIndex: number, attempt = 1) {
  return {
    jobId,
    stageIndex,
    slotIndex,
    attempt,
    storageKey: `jobs/${jobId}/${stageIndex}/${slotIndex}/${attempt}.webp`,
    contentType: 'image/webp',
    byteSize: 2048,
    width: 1024,
    height: 576,
  };
}

/** The JobResult an engine would report for the job as the database holds it. */
export async function resultFromDatabase(database: Database, jobId: string, cancelled = false): Promise<JobResult> {
  const job = await loadJob(database, jobId);
  if (!job) throw new Error(`no job ${jobId}`);
  const stages: StageResult[] = job.stages.map((slots, index) => {
    const attachIds = slots.map((s) => s.attachId).filter((id): id is string => id !== null);
    return {
      index,
      quantity: slots.length,
      delivered: attachIds.length,
      attachIds,
      shortfall:
        attachIds.length === slots.length
          ? null
          : { count: slots.length - attachIds.length, reason: cancelled ? 'cancelled' : 'budget_exhausted', errorClass: cancelled ? null : 'overloaded' },
    };
  });
  return {
    jobId,
    status: jobStatusOf(stages, cancelled),
    totalImages: job.total,
    deliveredImages: stages.reduce((n, s) => n + s.delivered, 0),
    attachIds: stages.flatMap((s) => s.attachIds),
    stages,
  };
}

/** Row counts that any write of a job would change. */
export async function footprint(database: Database, userId: string) {
  const { db } = database;
  const count = async (table: 'jobs' | 'credit_ledger' | 'attachments', column: 'user_id') =>
    (await db.selectFrom(table).select((eb) => eb.fn.countAll<number>().as('n')).where(column, '=', userId).executeTakeFirstOrThrow()).n;
  const account = await db.selectFrom('credit_accounts').select(['balance', 'reserved']).where('user_id', '=', userId).executeTakeFirst();
  return {
    jobs: Number(await count('jobs', 'user_id')),
    ledger: Number(await count('credit_ledger', 'user_id')),
    attachments: Number(await count('attachments', 'user_id')),
    account: account ?? null,
  };
}

/** Resolves once `condition()` holds; fails after `timeoutMs`. For effects that finish asynchronously. */
export async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The job's attempts as `stage/slot/attempt:outcome`, in that order. */
export async function outcomes(database: Database, jobId: string): Promise<string[]> {
  const rows = await database.db
    .selectFrom('attempts')
    .select(['stage_index', 'slot_index', 'attempt', 'outcome'])
    .where('job_id', '=', jobId)
    .orderBy('stage_index')
    .orderBy('slot_index')
    .orderBy('attempt')
    .execute();
  return rows.map((r) => `${r.stage_index}/${r.slot_index}/${r.attempt}:${r.outcome}`);
}
