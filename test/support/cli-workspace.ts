/**
 * What CLI tests need around the process (see cli.ts): a temp workspace with a real
 * input image, job files, the generated files on disk, the `--json` summary contract,
 * and a read-only look at the database after the CLI exited.
 *
 *   <workspace>/input.png                       the stages' input image
 *   <workspace>/<name>.json                     job files (writeJob)
 *   <workspace>/data/db                         the CLI's PGlite (pgliteOf)
 *   <workspace>/data/storage/generated/<jobId>  delivered images (generatedFiles, stampsOnDisk)
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import sharp from 'sharp';
import { openDatabase, type DatabaseConfig } from '../../src/db/index.js';
import { readStamp } from './stamped-image.js';

/** A temp folder holding a job's files and (under `data/`) the CLI's data dir. */
export interface Workspace {
  readonly root: string;
  readonly dataDir: string;
  /** Writes a job file (an object is JSON-encoded, a string written as is) and returns its path. */
  writeJob(name: string, content: unknown): Promise<string>;
  dispose(): Promise<void>;
}

/** Creates a workspace with `input.png`, the image `jobSpec` stages refer to (relative to the job file). */
export async function createWorkspace(): Promise<Workspace> {
  const root = await mkdtemp(join(tmpdir(), 'imagegen-e2e-'));
  await sharp({ create: { width: 32, height: 18, channels: 3, background: '#6a8caf' } })
    .png()
    .toFile(join(root, 'input.png'));
  return {
    root,
    dataDir: join(root, 'data'),
    async writeJob(name, content) {
      const path = join(root, name);
      await writeFile(path, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
      return path;
    },
    dispose: () => rm(root, { recursive: true, force: true }),
  };
}

/** A job file body: stages given as `[prompt, quantity]`, each with the workspace's input image. */
export function jobSpec(jobId: string, userId: string, stages: readonly (readonly [string, number])[]): unknown {
  return {
    jobId,
    userId,
    stages: stages.map(([prompt, quantity]) => ({ prompt, quantity, 'aspect-ratio': '1:1', inputImage: 'input.png' })),
  };
}

/** Generated files of a job in the folder store, relative to `<storage>/generated/<jobId>/` (e.g. `0/3-1.webp`). */
export async function generatedFiles(storageRoot: string, jobId: string): Promise<string[]> {
  const base = join(storageRoot, 'generated', jobId);
  if (!existsSync(base)) return [];
  const entries = await readdir(base, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => relative(base, join(e.parentPath, e.name)))
    .sort();
}

/** The stamps (fake server call numbers) carried by the generated images of a job (folder-store temp files `.tmp-*` skipped). */
export async function stampsOnDisk(storageRoot: string, jobId: string): Promise<number[]> {
  const files = (await generatedFiles(storageRoot, jobId)).filter((f) => !/(^|\/)\.tmp-/.test(f));
  return Promise.all(files.map(async (f) => readStamp(new Uint8Array(await readFile(join(storageRoot, 'generated', jobId, f))))));
}

/** The `--json` summary contract of `run` / `status`. */
export interface Summary {
  jobId: string;
  status: string;
  totalImages: number;
  deliveredImages: number;
  attachIds: string[];
  stages: { index: number; quantity: number; delivered: number; attachIds: string[]; shortfall: null | { count: number; reason: string; errorClass?: string | null } }[];
  attempts: { total: number; failed: number; byClass: Record<string, number> };
  credits: { reserved: number; captured: number; released: number };
  cost: { estimatedUsd: number; perDeliveredImageUsd: number | null; wastedUsd: number; possiblyBilledUsd: number; possiblyBilledCount: number; maxCostUsd: number | null };
}

/** Parses stdout that must be exactly one JSON object (one line). */
export function parseSingleJson<T>(stdout: string): T {
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  if (lines.length !== 1) throw new Error(`stdout must hold exactly one JSON line, got ${lines.length}:\n${stdout}`);
  return JSON.parse(lines[0] as string) as T;
}

/** What the database holds about a job, read after the CLI processes ended. */
export interface DbView {
  jobs: number;
  attachments: { id: string; stage: number; slot: number; attempt: number; storageKey: string }[];
  ledger: { kind: string; amount: number; attachId: string | null }[];
  attempts: number;
  balance: { balance: number; reserved: number } | undefined;
  /** Whole-database counts: jobs, attachments (inputs included), ledger rows other than grants, attempts. */
  totals: { jobs: number; attachments: number; nonGrantLedger: number; attempts: number };
}

/**
 * Opens the database (PGlite of a data dir, or PostgreSQL) read-only by convention and
 * reads a job's rows. The embedded database admits one process: call it while no CLI
 * process holds that data dir.
 */
export async function readDb(config: DatabaseConfig, jobId: string, userId: string): Promise<DbView> {
  const database = await openDatabase(config);
  try {
    const { db } = database;
    const jobs = await db.selectFrom('jobs').select((eb) => eb.fn.countAll<number>().as('n')).where('id', '=', jobId).executeTakeFirstOrThrow();
    const attachments = await db
      .selectFrom('attachments')
      .select(['id', 'stage_index', 'slot_index', 'attempt', 'storage_key'])
      .where('job_id', '=', jobId)
      .orderBy('stage_index')
      .orderBy('slot_index')
      .execute();
    const ledger = await db.selectFrom('credit_ledger').select(['kind', 'amount', 'attach_id']).where('job_id', '=', jobId).execute();
    const attempts = await db.selectFrom('attempts').select((eb) => eb.fn.countAll<number>().as('n')).where('job_id', '=', jobId).executeTakeFirstOrThrow();
    const balance = await db.selectFrom('credit_accounts').select(['balance', 'reserved']).where('user_id', '=', userId).executeTakeFirst();
    const count = async (q: Promise<{ n: number | string | bigint }>) => Number((await q).n);
    const totals = {
      jobs: await count(db.selectFrom('jobs').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
      attachments: await count(db.selectFrom('attachments').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
      nonGrantLedger: await count(db.selectFrom('credit_ledger').select((eb) => eb.fn.countAll<number>().as('n')).where('kind', '!=', 'grant').executeTakeFirstOrThrow()),
      attempts: await count(db.selectFrom('attempts').select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()),
    };
    return {
      totals,
      jobs: Number(jobs.n),
      attachments: attachments.map((a) => ({ id: a.id, stage: Number(a.stage_index), slot: Number(a.slot_index), attempt: Number(a.attempt), storageKey: a.storage_key })),
      ledger: ledger.map((l) => ({ kind: l.kind, amount: Number(l.amount), attachId: l.attach_id })),
      attempts: Number(attempts.n),
      balance: balance ? { balance: Number(balance.balance), reserved: Number(balance.reserved) } : undefined,
    };
  } finally {
    await database.close();
  }
}

/** The PGlite config of a CLI data dir (`<data dir>/db`). */
export function pgliteOf(dataDir: string): DatabaseConfig {
  return { dataDir: join(dataDir, 'db') };
}
