/**
 * The end-of-run audit every reliability test applies: it reads the job back from
 * the database and the object store (never from the events the run emitted) and
 * returns everything a test asserts on, so a test states the invariants in one
 * place and a broken invariant shows the whole picture.
 */
import { firstValueFrom } from 'rxjs';
import { expect } from 'vitest';
import type { Database } from '../../../src/db/database.js';
import { getBalance } from '../../../src/db/ops/get-balance.js';
import { readJobResult } from '../../../src/db/ops/read-job-result.js';
import { replayLedger } from '../../../src/db/ops/replay-ledger.js';
import type { ObjectStore } from '../../../src/sinks/object-store.js';
import { generatedImagePrefix } from '../../../src/sinks/storage-keys.js';
import { readStamp } from '../../support/stamped-image.js';
import type { FakeGeminiServer } from '../../support/fake-gemini-server.js';
import type { StoredJobResult } from '../../../src/db/ops/read-job-result.js';

export interface JobAudit {
  readonly stored: StoredJobResult;
  /** Attach records of generated images of the job. */
  readonly attachments: readonly { id: string; storageKey: string; stage: number; slot: number }[];
  /** Keys under `generated/<jobId>/` in the object store. */
  readonly objectKeys: readonly string[];
  /** Objects no attach record points to (orphans). */
  readonly orphanKeys: readonly string[];
  /** Attach records whose object is missing. */
  readonly missingObjects: readonly string[];
  /** `capture` ledger rows of the job (one per delivered image, exactly once). */
  readonly captures: readonly { attachId: string | null; amount: number }[];
  /** Stamps read from the stored WebPs (one per attach record). */
  readonly stamps: readonly number[];
  readonly balance: { balance: number; reserved: number };
  readonly replayed: { balance: number; reserved: number };
}

/** Reads a finished (or interrupted) job back from every place it lives. */
export async function auditJob(database: Database, store: ObjectStore, jobId: string, options: { readStamps?: boolean } = {}): Promise<JobAudit> {
  const stored = await readJobResult(database, jobId);
  if (!stored) throw new Error(`audit: no job ${jobId}`);
  const rows = await database.db
    .selectFrom('attachments')
    .select(['id', 'storage_key', 'stage_index', 'slot_index'])
    .where('job_id', '=', jobId)
    .execute();
  const attachments = rows.map((r) => ({ id: r.id, storageKey: r.storage_key, stage: r.stage_index ?? -1, slot: r.slot_index ?? -1 }));
  const objectKeys = await firstValueFrom(store.list(generatedImagePrefix(jobId)));
  const referenced = new Set(attachments.map((a) => a.storageKey));
  const present = new Set(objectKeys);
  const captures = await database.db
    .selectFrom('credit_ledger')
    .select(['attach_id', 'amount'])
    .where('job_id', '=', jobId)
    .where('kind', '=', 'capture')
    .execute();
  const stamps: number[] = [];
  if (options.readStamps !== false) {
    for (const a of attachments) {
      if (!present.has(a.storageKey)) continue;
      stamps.push(await readStamp(await firstValueFrom(store.get(a.storageKey))));
    }
  }
  return {
    stored,
    attachments,
    objectKeys,
    orphanKeys: objectKeys.filter((k) => !referenced.has(k)),
    missingObjects: attachments.map((a) => a.storageKey).filter((k) => !present.has(k)),
    captures: captures.map((c) => ({ attachId: c.attach_id, amount: c.amount })),
    stamps,
    balance: await getBalance(database, stored.userId),
    replayed: await replayLedger(database, stored.userId),
  };
}

/**
 * The invariants that hold for every ended job, exact or short:
 * delivered == attach records == stored objects == captures (one per attach record),
 * no orphan object, no duplicate image, every image one the provider served,
 * captured + released == reserved, the ledger replays to the balance and nothing
 * stays reserved. `granted` is what the user was given before the job.
 */
export function expectEndedHonestly(audit: JobAudit, options: { price: number; granted: number; server?: FakeGeminiServer }): void {
  const { stored } = audit;
  const delivered = stored.result.deliveredImages;
  const summary = {
    status: stored.rowStatus,
    delivered,
    attachments: audit.attachments.length,
    objects: audit.objectKeys.length,
    captures: audit.captures.length,
    orphans: audit.orphanKeys,
    missing: audit.missingObjects,
  };
  expect(['completed', 'partial', 'failed', 'cancelled'], JSON.stringify(summary)).toContain(stored.rowStatus);
  expect(summary).toMatchObject({ attachments: delivered, objects: delivered, captures: delivered, orphans: [], missing: [] });
  // Each attach record is charged exactly once, with the job's price.
  const charged = new Set(audit.captures.map((c) => c.attachId));
  expect(charged.size).toBe(delivered);
  for (const a of audit.attachments) expect(charged.has(a.id), `attach ${a.id} has a capture`).toBe(true);
  for (const c of audit.captures) expect(c.amount).toBe(options.price);
  expect(stored.credits.captured).toBe(delivered * options.price);
  expect(stored.credits.captured + stored.credits.released).toBe(stored.credits.reserved);
  // The merged list is exactly the attach records, in stage then slot order.
  const ordered = [...audit.attachments].sort((a, b) => a.stage - b.stage || a.slot - b.slot).map((a) => a.id);
  expect(stored.result.attachIds).toEqual(ordered);
  // No image twice: every stored image carries a distinct stamp of a call the provider answered with an image.
  if (audit.stamps.length > 0) {
    expect(new Set(audit.stamps).size, `duplicate stamps in ${audit.stamps.join(',')}`).toBe(audit.stamps.length);
    if (options.server) {
      const served = new Set(options.server.requests.map((r) => r.servedStamp).filter((s) => s !== undefined));
      for (const s of audit.stamps) expect(served.has(s), `stamp ${s} was served by the provider`).toBe(true);
    }
  }
  expect(audit.balance).toEqual(audit.replayed);
  expect(audit.balance).toEqual({ balance: options.granted - delivered * options.price, reserved: 0 });
}
