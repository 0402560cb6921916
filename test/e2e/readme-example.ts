/**
 * The library example of README.md ("The library"), as a host writes it: imported from
 * the package by name (`imagegen-pipeline`, resolved through package.json "exports" to
 * the built `dist/index.js` and `dist/index.d.ts`). `npm run typecheck` compiles this
 * file (tsconfig.json includes test/), so the example has to type-check against the
 * package's published types; test/e2e/package-entry.test.ts runs it.
 *
 * The README's free names are parameters here: the environment given to `loadConfig`
 * (the README reads `process.env`), `inputId`, `console`, `render` and `done`. Every
 * other line is the README's (indented, and returned): a watched `slot:delivered`
 * (`SlotDeliveredNotification`, derived from the engine's `SlotDeliveredEvent`) carries
 * `progress` and `stageProgress` under the same names as the event `runJob` emits.
 */
import { engineOptionsOf, loadConfig, openPipeline, runJob, watchJob, type Pipeline } from 'imagegen-pipeline';
import type { Subscription } from 'rxjs';

/** `const pipeline = await openPipeline(loadConfig());` with the environment passed in. */
export async function openExamplePipeline(env: Readonly<Record<string, string | undefined>>): Promise<Pipeline> {
  const pipeline = await openPipeline(loadConfig(env)); // database, storage, generator, logger
  return pipeline;
}

/** The README's first block: run job `j-1` (3 images of a cat) in this process, printing progress. */
export function runExampleJob(pipeline: Pipeline, inputId: string, console: Pick<Console, 'log'>): Subscription {
  const events$ = runJob(pipeline, {
    spec: { jobId: 'j-1', userId: 'alice', stages: [{ quantity: 3, prompt: 'a cat', mergedImageAttachId: inputId }] },
  }, engineOptionsOf(pipeline.config));

  return events$.subscribe((event) => {
    if (event.type === 'slot:delivered') console.log(`${event.progress.delivered}/${event.progress.total}`);
    if (event.type === 'job:finished') console.log(event.status, event.result.attachIds);
  });
}

/** The README's second block: a host watches job `j-1`. */
export function watchExampleJob(pipeline: Pipeline, render: (delivered: number, total: number) => void, done: (status: string) => void): Subscription {
  return watchJob(pipeline.database, 'j-1').subscribe((event) => {
    if (event.type === 'snapshot') render(event.delivered, event.total);   // state at subscribe time
    if (event.type === 'slot:delivered') render(event.progress.delivered, event.progress.total); // job-wide (stageProgress: the stage's)
    if (event.type === 'job:finished') done(event.status);
  });
}
