/**
 * The source document's design, as a baseline only (never used by the library):
 *
 * - every stage in parallel (one "goroutine" per stage), each stage a **sequential**
 *   loop of `quantity` provider calls; a failed call is skipped (`continue`);
 * - after every stage finished (`wg.Wait()`), for each short stage in turn,
 *   re-download the input image and run **one sequential retry pass** of `missing`
 *   attempts; whatever is still missing stays missing.
 *
 * Per delivered image it does what the Go worker does: bytes -> WebP, upload, attach
 * record. It skips the credit deduction and the progress write (the Go code fires the
 * deduction off and forgets it), which only makes the baseline cheaper.
 */
import { firstValueFrom } from 'rxjs';
import type { AspectRatio } from '../src/domain/aspect-ratio.js';
import type { ImageGenerator, InputImage } from '../src/domain/ports.js';
import type { Database } from '../src/db/database.js';
import { createAttachment } from '../src/db/ops/create-attachment.js';
import { getAttachment } from '../src/db/ops/get-attachment.js';
import { toWebp } from '../src/adapters/image-codec.js';
import type { ObjectStore } from '../src/sinks/object-store.js';

export interface SourceDesignDeps {
  readonly database: Database;
  readonly store: ObjectStore;
  readonly generator: ImageGenerator;
}

export interface SourceDesignJob {
  readonly jobId: string;
  readonly userId: string;
  readonly stages: readonly { readonly quantity: number; readonly prompt: string; readonly aspectRatio: AspectRatio; readonly inputAttachId: string }[];
}

export interface SourceDesignResult {
  /** Attach ids per stage, first pass then retry pass. */
  readonly stages: readonly string[][];
  readonly missingAfterFirstPass: readonly number[];
  readonly recoveredByRetry: readonly number[];
  readonly calls: number;
  /** The source marks the job Complete whatever the count. */
  readonly status: 'Complete';
  readonly firstPassMs: number;
  readonly totalMs: number;
}

export async function runSourceDesign(deps: SourceDesignDeps, job: SourceDesignJob): Promise<SourceDesignResult> {
  const t0 = performance.now();
  let calls = 0;
  let sequence = 0;

  const downloadInput = async (attachId: string): Promise<InputImage> => {
    const attachment = await getAttachment(deps.database, attachId);
    if (!attachment) throw new Error(`no input attachment ${attachId}`);
    return { bytes: await firstValueFrom(deps.store.get(attachment.storageKey)), mimeType: attachment.contentType };
  };

  // One image: call, convert, upload, attach. Any failure: skip it, as the Go loop's `continue`.
  const oneImage = async (stageIndex: number, input: InputImage, into: string[]): Promise<void> => {
    const stage = job.stages[stageIndex]!;
    const n = sequence++;
    calls++;
    try {
      const image = await firstValueFrom(
        deps.generator.generate({
          jobId: job.jobId,
          stageIndex,
          slotIndex: into.length,
          attempt: 1,
          prompt: stage.prompt,
          aspectRatio: stage.aspectRatio,
          inputAttachId: stage.inputAttachId,
          input,
        }),
      );
      const webp = await toWebp(image.bytes);
      const key = `source-design/${job.jobId}/${stageIndex}/${n}.webp`;
      await firstValueFrom(deps.store.put(key, webp.bytes, webp.contentType), { defaultValue: undefined });
      const { attachId } = await createAttachment(deps.database, {
        userId: job.userId,
        storageKey: key,
        contentType: webp.contentType,
        byteSize: webp.byteSize,
        width: webp.width,
        height: webp.height,
      });
      into.push(attachId);
    } catch {
      // The source logs and continues: the image is silently missing.
    }
  };

  const results: string[][] = job.stages.map(() => []);
  await Promise.all(
    job.stages.map(async (stage, i) => {
      const input = await downloadInput(stage.inputAttachId);
      for (let k = 0; k < stage.quantity; k++) await oneImage(i, input, results[i]!);
    }),
  );
  const firstPassMs = performance.now() - t0;
  const missingAfterFirstPass = job.stages.map((s, i) => s.quantity - results[i]!.length);
  const recoveredByRetry: number[] = [];
  for (let i = 0; i < job.stages.length; i++) {
    const missing = missingAfterFirstPass[i]!;
    const before = results[i]!.length;
    if (missing > 0) {
      const input = await downloadInput(job.stages[i]!.inputAttachId);
      for (let k = 0; k < missing; k++) await oneImage(i, input, results[i]!);
    }
    recoveredByRetry.push(results[i]!.length - before);
  }
  return { stages: results, missingAfterFirstPass, recoveredByRetry, calls, status: 'Complete', firstPassMs, totalMs: performance.now() - t0 };
}
