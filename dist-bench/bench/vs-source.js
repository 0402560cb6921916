/**
 * Figure 2: the same job (3 stages x 100, latency 300 ms, 10% transient 5xx, same
 * server seed, so call n fails in every run exactly when it fails in the others)
 * under the source's design (bench/source-design.ts) and under ours.
 *
 * Runs, in one process, one after the other, each against a fresh server:
 *  1. source design: stages in parallel, each sequential, one sequential retry pass;
 *  2. ours, global concurrency 10, stage concurrency 10 (figure 1's settings);
 *  3. ours at the source's in-flight count: global 3, stage 1 (isolates the barrier
 *     and the retry pass from the extra concurrency). BENCH_EQUAL_INFLIGHT=0 skips it.
 */
import { failureMixFromEnv, serverCounts, startProvider } from './gemini-fixture.js';
import { measureOurs, settingsFromEnv } from './makespan.js';
import { runSourceDesign } from './source-design.js';
import { fmt, openBenchPipeline } from './support.js';
const settings = settingsFromEnv();
const total = settings.stages * settings.quantity;
async function measureSource() {
    const { server, generator } = await startProvider({
        latencyMs: settings.latencyMs,
        failureRate: settings.failureRate,
        seed: settings.seed,
        classes: failureMixFromEnv(),
    });
    const pipeline = await openBenchPipeline({ generator, globalConcurrency: 1, credits: 1 });
    try {
        const result = await runSourceDesign(pipeline, {
            jobId: 'source-design',
            userId: pipeline.userId,
            stages: Array.from({ length: settings.stages }, (_, i) => ({
                quantity: settings.quantity,
                prompt: `benchmark stage ${i}`,
                aspectRatio: '16:9',
                inputAttachId: pipeline.inputAttachId,
            })),
        });
        return { result, counts: serverCounts(server) };
    }
    finally {
        await pipeline.close();
        await server.close();
    }
}
const source = await measureSource();
const sourceDelivered = source.result.stages.reduce((n, s) => n + s.length, 0);
console.log(`source design: stages in parallel, each sequential, then one sequential retry pass`);
console.log(`  final ${sourceDelivered}/${total} (${source.result.stages.map((s) => `${s.length}/${settings.quantity}`).join(', ')}), marked ${source.result.status}; ` +
    `missing after first pass ${source.result.missingAfterFirstPass.join('/')}, recovered by the retry pass ${source.result.recoveredByRetry.join('/')}`);
console.log(`  provider calls ${source.counts.calls} (failed ${source.counts.failures}); first pass ${fmt(source.result.firstPassMs, 0)} ms, total ${fmt(source.result.totalMs, 0)} ms`);
const ours = await measureOurs(settings);
console.log(`ours, global ${settings.concurrency}, stage ${settings.stageConcurrency}:`);
console.log(`  final ${ours.delivered}/${total} (${ours.perStage.join(', ')}), status ${ours.status}; provider calls ${ours.calls}; makespan ${fmt(ours.wallMs, 0)} ms`);
console.log(`  FIGURE 2 speed-up source/ours = ${fmt(source.result.totalMs / ours.wallMs, 2)}x; final counts source ${sourceDelivered}/${total}, ours ${ours.delivered}/${total}`);
if (process.env['BENCH_EQUAL_INFLIGHT'] !== '0') {
    const equal = await measureOurs({ ...settings, concurrency: settings.stages, stageConcurrency: 1 });
    console.log(`ours at the source's in-flight count (global ${settings.stages}, stage 1):`);
    console.log(`  final ${equal.delivered}/${total} (${equal.perStage.join(', ')}), status ${equal.status}; provider calls ${equal.calls}; makespan ${fmt(equal.wallMs, 0)} ms = ${fmt(equal.makespanRatio, 3)} x its ideal ${equal.idealMs} ms`);
    console.log(`  speed-up source/ours-at-equal-in-flight = ${fmt(source.result.totalMs / equal.wallMs, 2)}x`);
}
