/**
 * The service (`buildServer`) on a real port, spoken to over HTTP with `fetch`, on the
 * embedded defaults' shape: jobs run in this process (`LocalJobRunner`), a folder store, the
 * real Gemini adapter against the fake Gemini server whose calls the test holds and lets go
 * (so "mid-job" is a state the test makes, never a moment it waits for). On PGlite, and on
 * PostgreSQL when DATABASE_URL is set.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GeminiImageGenerator } from '../../src/adapters/gemini-image-generator.js';
import { GeminiBatchGenerator } from '../../src/adapters/gemini-batch-generator.js';
import { startFakeGeminiServer, type FakeGeminiServer } from '../support/fake-gemini-server.js';
import { DATABASE_KINDS, postgresLegSkipped } from '../support/databases.js';
import { Gate } from '../support/gate.js';
import { inputPng, openEvents, startService, TOKENS, type SseFrame, type TestService } from '../support/http-service.js';
import { waitFor } from '../support/cli.js';

const FOLLOWED = ['attempt:failed', 'slot:delivered', 'stage:completed', 'stage:short', 'job:finished'];

for (const kind of DATABASE_KINDS) {
  const title = `the service over HTTP [${kind}]`;
  if (postgresLegSkipped(kind, title)) continue;

  describe(title, () => {
    let gemini: FakeGeminiServer;
    let gate: Gate;
    let service: TestService;
    let inputId: string;

    beforeAll(async () => {
      gate = new Gate();
      gemini = await startFakeGeminiServer({ hold: gate.hold });
      gate.open();
      service = await startService({
        kind,
        generator: new GeminiImageGenerator({ apiKey: gemini.apiKey, baseUrl: gemini.url, timeoutMs: 30_000 }),
        batches: new GeminiBatchGenerator({ apiKey: gemini.apiKey, baseUrl: gemini.url, timeoutMs: 30_000 }),
      });
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/alice', { amount: 500 })).status).toBe(200);
      const upload = await service.call(TOKENS.alice, 'POST', '/v1/attachments', new Uint8Array(await inputPng()), { 'content-type': 'image/png' });
      expect(upload.status).toBe(201);
      inputId = upload.body.attachId;
    });
    afterAll(async () => {
      gate?.open();
      await service?.close();
      await gemini?.close();
    });

    const spec = (jobId: string, quantity: number, prompt = 'a lighthouse') => ({ jobId, stages: [{ quantity, prompt, 'aspect-ratio': '1:1', mergedImageAttachId: inputId }] });

    /** A fresh gate for the following calls: nothing answers until the test says. */
    const holdCalls = (): Gate => {
      gate = new Gate();
      gemini.setHold(gate.hold);
      return gate;
    };

    it('answers 401 without a token or with an unknown one, and health probes without one', async () => {
      const none = await service.call(null, 'GET', '/v1/jobs');
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toBe('Bearer');
      expect(none.body.error.code).toBe('unauthorized');
      expect((await service.call('not-a-known-token-000', 'GET', '/v1/jobs')).status).toBe(401);
      expect((await service.call(null, 'GET', '/v1/jobs', undefined, { authorization: 'Basic YWxpY2U6eA==' })).status).toBe(401);
      expect((await service.call(null, 'GET', '/healthz')).body).toEqual({ status: 'ok' });
      const ready = await service.call(null, 'GET', '/readyz');
      expect(ready.status).toBe(200);
      expect(ready.body).toEqual({ ready: true, database: 'ok', storage: 'ok' });
    });

    it('submits a job (201, Location, the summary) and follows it over SSE to the end; the images are WebP', async () => {
      // The calls wait until the stream is open: a job that ended first would send its snapshot only (the last case below).
      const held = holdCalls();
      const submitted = await service.call(TOKENS.alice, 'POST', '/v1/jobs', spec('follow-1', 4));
      expect(submitted.status).toBe(201);
      expect(submitted.headers.get('location')).toBe('/v1/jobs/follow-1');
      expect(submitted.body).toMatchObject({ jobId: 'follow-1', totalImages: 4, credits: { reserved: 4 } });

      const stream = await openEvents(service, TOKENS.alice, 'follow-1');
      expect(stream.status).toBe(200);
      expect(stream.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
      held.open();
      const frames = await stream.rest();
      const [snapshot, ...events] = frames as [SseFrame, ...SseFrame[]];
      expect(snapshot.event).toBe('snapshot');
      expect(snapshot.data.jobId).toBe('follow-1');
      // Every event after the snapshot's number, in order, each once, and the stream ends after job:finished.
      const ids = events.map((f) => f.id as number);
      expect(ids).toEqual([...ids].sort((a, b) => a - b));
      expect(new Set(ids).size).toBe(ids.length);
      expect(ids.every((id) => id > (snapshot.id as number))).toBe(true);
      expect(events.every((f) => FOLLOWED.includes(f.event))).toBe(true);
      const last = events.at(-1) as SseFrame;
      expect(last.event).toBe('job:finished');
      expect(last.data.status).toBe('completed');
      // The snapshot plus the events account for every image.
      const delivered = new Set([...snapshot.data.attachIds, ...events.filter((f) => f.event === 'slot:delivered').map((f) => f.data.attachId)]);
      expect(delivered.size).toBe(4);

      const summary = await service.call(TOKENS.alice, 'GET', '/v1/jobs/follow-1');
      expect(summary.body).toMatchObject({ status: 'completed', deliveredImages: 4, credits: { reserved: 4, captured: 4, released: 0 } });
      expect(new Set(summary.body.attachIds)).toEqual(delivered);

      const image = await fetch(`${service.url}/v1/jobs/follow-1/images/0/3`, { headers: { authorization: `Bearer ${TOKENS.alice}` } });
      expect(image.status).toBe(200);
      expect(image.headers.get('content-type')).toBe('image/webp');
      const bytes = Buffer.from(await image.arrayBuffer());
      expect(bytes.subarray(0, 4).toString('latin1')).toBe('RIFF');
      expect(bytes.subarray(8, 12).toString('latin1')).toBe('WEBP');
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/follow-1/images/0/4')).status).toBe(404);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/follow-1/images/1/0')).status).toBe(404);

      // A job that has ended: its snapshot, then the stream ends.
      const again = await (await openEvents(service, TOKENS.alice, 'follow-1')).rest();
      expect(again.map((f) => f.event)).toEqual(['snapshot']);
      expect(again[0]?.data.status).toBe('completed');
    });

    it('a client that disconnects mid-job and reconnects with Last-Event-ID gets every missed event, none twice', async () => {
      const held = holdCalls();
      // The job's calls are numbered on from here (the runner may call before the stream opens).
      const calls = gemini.calls();
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', spec('resume-1', 6))).status).toBe(201);
      const first = await openEvents(service, TOKENS.alice, 'resume-1');
      const seen: SseFrame[] = [];
      const snapshot = await first.next();
      expect(snapshot?.event).toBe('snapshot');
      held.release(calls + 1);
      held.release(calls + 2);
      while (seen.filter((f) => f.event === 'slot:delivered').length < 2) seen.push((await first.next()) as SseFrame);
      first.close();
      const lastSeen = (seen.at(-1) as SseFrame).id as number;

      // While nobody listens, a third image is delivered.
      held.release(calls + 3);
      await waitFor('a third delivery', async () => (await service.call(TOKENS.alice, 'GET', '/v1/jobs/resume-1')).body.deliveredImages >= 3);
      const second = await openEvents(service, TOKENS.alice, 'resume-1', lastSeen);
      const firstOfSecond = await second.next();
      // A resume sends no snapshot: the missed events come first.
      expect(FOLLOWED).toContain(firstOfSecond?.event);
      held.open();
      const rest = [firstOfSecond as SseFrame, ...(await second.rest())];
      expect(rest.at(-1)?.event).toBe('job:finished');

      // The whole log, replayed from the start: the two connections saw exactly it, in order.
      const replay = await (await openEvents(service, TOKENS.alice, 'resume-1', 0)).rest();
      const fromSnapshot = replay.filter((f) => (f.id as number) > (snapshot?.id as number));
      expect([...seen, ...rest].map((f) => [f.id, f.event])).toEqual(fromSnapshot.map((f) => [f.id, f.event]));
      const attachIds = replay.filter((f) => f.event === 'slot:delivered').map((f) => f.data.attachId);
      expect(new Set(attachIds).size).toBe(6);
      expect(replay.at(-1)?.data.status).toBe('completed');
    });

    it('is idempotent on jobId: the same spec again is 200 with the same job, another spec 409', async () => {
      const again = await service.call(TOKENS.alice, 'POST', '/v1/jobs', spec('follow-1', 4));
      expect(again.status).toBe(200);
      expect(again.headers.get('location')).toBe('/v1/jobs/follow-1');
      expect(again.body).toMatchObject({ jobId: 'follow-1', status: 'completed', credits: { reserved: 4, captured: 4 } });
      const other = await service.call(TOKENS.alice, 'POST', '/v1/jobs', spec('follow-1', 4, 'another prompt'));
      expect(other.status).toBe(409);
      expect(other.body.error.code).toBe('conflict');
      expect(other.body.error.problems[0].field).toBe('jobId');
      // Another user's job id: the same answer, nothing said about whose it is.
      const foreign = await service.call(TOKENS.bob, 'POST', '/v1/jobs', spec('follow-1', 4));
      expect(foreign.status).toBe(409);
      expect(JSON.stringify(foreign.body)).not.toContain('alice');
      // Money moved once.
      expect((await service.call(TOKENS.alice, 'GET', '/v1/credits')).body).toMatchObject({ userId: 'alice', reserved: 0 });
    });

    it("another user's job is 404 on every route, as if it did not exist", async () => {
      for (const [method, path] of [
        ['GET', '/v1/jobs/follow-1'],
        ['DELETE', '/v1/jobs/follow-1'],
        ['GET', '/v1/jobs/follow-1/images/0/0'],
        ['GET', '/v1/jobs/no-such-job'],
      ] as const) {
        const answer = await service.call(TOKENS.bob, method, path);
        expect(answer.status, `${method} ${path}`).toBe(404);
        expect(answer.body.error.code).toBe('not_found');
      }
      const events = await openEvents(service, TOKENS.bob, 'follow-1');
      expect(events.status).toBe(404);
      expect((await service.call(TOKENS.bob, 'GET', '/v1/jobs')).body.jobs).toEqual([]);
      // Another user's attachment is refused like one that does not exist.
      await service.call(TOKENS.admin, 'POST', '/v1/credits/bob', { amount: 10 });
      const borrowed = await service.call(TOKENS.bob, 'POST', '/v1/jobs', { stages: [{ quantity: 1, prompt: 'x', mergedImageAttachId: inputId }] });
      expect(borrowed.status).toBe(400);
      expect(borrowed.body.error.problems[0]).toMatchObject({ field: 'stages[0].mergedImageAttachId', rule: expect.stringContaining('does not exist') });
      // An admin sees it.
      expect((await service.call(TOKENS.admin, 'GET', '/v1/jobs/follow-1')).status).toBe(200);
    });

    it('validates a job with the CLI\'s problems list (400), refuses file paths, and 402 without enough credits', async () => {
      const bad = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { stages: [{ quantity: 0, prompt: '', mergedImageAttachId: inputId }] });
      expect(bad.status).toBe(400);
      expect(bad.body.error.code).toBe('invalid_input');
      expect(bad.body.error.problems).toEqual([
        { field: 'stages[0].quantity', rule: 'must be a positive integer, got number 0', message: 'stages[0].quantity: must be a positive integer, got number 0' },
        { field: 'stages[0].prompt', rule: 'must not be empty', message: 'stages[0].prompt: must not be empty' },
      ]);
      const path = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { stages: [{ quantity: 1, prompt: 'x', inputImage: '/etc/passwd' }] });
      expect(path.status).toBe(400);
      expect(path.body.error.problems.map((p: { field: string }) => p.field)).toEqual(['stages[0].inputImage']);
      const named = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { userId: 'bob', stages: [{ quantity: 1, prompt: 'x', mergedImageAttachId: inputId }] });
      expect(named.status).toBe(400);
      expect(named.body.error.problems[0].field).toBe('userId');
      const notJson = await service.call(TOKENS.alice, 'POST', '/v1/jobs', '{"stages": [', { 'content-type': 'application/json' });
      expect(notJson.status).toBe(400);
      const poor = await service.call(TOKENS.carol, 'POST', '/v1/jobs', { inputImageData: undefined, stages: [{ quantity: 2, prompt: 'x', inputImageData: (await inputPng()).toString('base64') }] });
      expect(poor.status).toBe(402);
      expect(poor.body.error).toMatchObject({ code: 'insufficient_credits', problems: [{ field: 'credits', rule: 'user carol needs 2 credits, has 0' }] });
    });

    it('a spend cap (maxCostUsd): a bad one is 400 naming the field; a job capped at about two images ends partial with cost_cap, its cost within the cap', async () => {
      const bad = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { ...spec('capped-bad', 1), maxCostUsd: -1 });
      expect(bad.status).toBe(400);
      expect(bad.body.error.problems.map((p: { field: string }) => p.field)).toEqual(['maxCostUsd']);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/capped-bad')).status).toBe(404);

      const created = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { ...spec('capped-1', 5), maxCostUsd: 0.1 });
      expect(created.status).toBe(201);
      expect(created.body.cost.maxCostUsd).toBe(0.1);
      const events = await (await openEvents(service, TOKENS.alice, 'capped-1')).rest();
      expect(events.at(-1)?.data.status).toBe('partial');
      const job = (await service.call(TOKENS.alice, 'GET', '/v1/jobs/capped-1')).body;
      expect(job.stages[0].shortfall).toMatchObject({ reason: 'cost_cap', count: 5 - job.deliveredImages });
      expect(job.deliveredImages).toBeGreaterThan(0);
      expect(job.cost.estimatedUsd + job.cost.possiblyBilledUsd).toBeLessThanOrEqual(0.1 + 1e-9);
      // One more image would have passed the cap.
      expect(job.cost.estimatedUsd + job.cost.perDeliveredImageUsd).toBeGreaterThan(0.1);
    });

    it('batch mode over HTTP: a bad mode is 400 naming the field; a batch job runs through one provider batch and its summary says mode and rounds', async () => {
      const bad = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { ...spec('batch-bad', 1), mode: 'later' });
      expect(bad.status).toBe(400);
      expect(bad.body.error.problems.map((p: { field: string }) => p.field)).toEqual(['mode']);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/batch-bad')).status).toBe(404);

      const batchesBefore = gemini.batches.length;
      const callsBefore = gemini.calls();
      const created = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { ...spec('batch-1', 3, 'a batched lighthouse'), mode: 'batch' });
      expect(created.status).toBe(201);
      expect(created.body).toMatchObject({ mode: 'batch', stages: [{ mode: 'batch' }] });
      const events = await (await openEvents(service, TOKENS.alice, 'batch-1')).rest();
      expect(events.at(-1)?.data.status).toBe('completed');
      const job = (await service.call(TOKENS.alice, 'GET', '/v1/jobs/batch-1')).body;
      expect(job).toMatchObject({ mode: 'batch', deliveredImages: 3, credits: { captured: 3, released: 0 } });
      const batch = gemini.batches[batchesBefore]!;
      expect(gemini.batches.length - batchesBefore, 'one provider batch, no interactive call').toBe(1);
      expect(gemini.calls()).toBe(callsBefore);
      expect(batch.displayName).toBe('imagegen/batch-1/0/1');
      expect(job.stages[0].rounds).toEqual([{ round: 1, batch: batch.name, state: 'succeeded', requests: 3, delivered: 3, failed: 0, error: null }]);
    });

    it('takes the input image inline (base64) and recognises it again by content', async () => {
      const data = (await inputPng()).toString('base64');
      const body = { jobId: 'inline-1', stages: [{ quantity: 1, prompt: 'inline', inputImageData: data }] };
      const first = await service.call(TOKENS.alice, 'POST', '/v1/jobs', body);
      expect(first.status).toBe(201);
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', body)).status).toBe(200);
      const broken = await service.call(TOKENS.alice, 'POST', '/v1/jobs', { stages: [{ quantity: 1, prompt: 'x', inputImageData: data.slice(0, 40) }] });
      expect(broken.status).toBe(400);
      expect(broken.body.error.problems[0].field).toBe('stages[0].inputImageData');
      const events = await (await openEvents(service, TOKENS.alice, 'inline-1')).rest();
      expect(events.at(-1)?.data.status).toBe('completed');
    });

    it('DELETE cancels a running job (202), and is 409 once it has ended', async () => {
      const held = holdCalls();
      const calls = gemini.calls();
      expect((await service.call(TOKENS.alice, 'POST', '/v1/jobs', spec('cancel-1', 3))).status).toBe(201);
      // An attempt is in flight: the job runs.
      await gemini.received(calls + 1);
      const stream = await openEvents(service, TOKENS.alice, 'cancel-1');
      const cancel = await service.call(TOKENS.alice, 'DELETE', '/v1/jobs/cancel-1');
      expect(cancel.status).toBe(202);
      expect(cancel.body).toEqual({ jobId: 'cancel-1', outcome: 'requested', status: 'running' });
      const frames = await stream.rest();
      expect(frames.at(-1)).toMatchObject({ event: 'job:finished', data: { status: 'cancelled' } });
      held.open();
      const after = await service.call(TOKENS.alice, 'DELETE', '/v1/jobs/cancel-1');
      expect(after.status).toBe(409);
      expect(after.body.error).toMatchObject({ code: 'conflict', problems: [{ field: 'status' }] });
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs/cancel-1')).body).toMatchObject({ status: 'cancelled', credits: { captured: 0, released: 3 } });
    });

    it('lists the caller\'s jobs newest first, page by page with an opaque cursor', async () => {
      const all = await service.call(TOKENS.alice, 'GET', '/v1/jobs?limit=100');
      expect(all.status).toBe(200);
      const ids: string[] = all.body.jobs.map((j: { jobId: string }) => j.jobId);
      expect(ids).toEqual(expect.arrayContaining(['follow-1', 'resume-1', 'inline-1', 'cancel-1']));
      expect(all.body.nextCursor).toBeNull();
      const created = all.body.jobs.map((j: { createdAt: string }) => Date.parse(j.createdAt));
      expect(created).toEqual([...created].sort((a, b) => b - a));
      const paged: string[] = [];
      let cursor: string | null = null;
      do {
        const page: { body: { jobs: { jobId: string }[]; nextCursor: string | null } } = await service.call(TOKENS.alice, 'GET', `/v1/jobs?limit=1${cursor ? `&cursor=${cursor}` : ''}`);
        expect(page.body.jobs.length).toBeLessThanOrEqual(1);
        paged.push(...page.body.jobs.map((j) => j.jobId));
        cursor = page.body.nextCursor;
      } while (cursor !== null);
      expect(paged).toEqual(ids);
      const cancelled = await service.call(TOKENS.alice, 'GET', '/v1/jobs?status=cancelled');
      expect(cancelled.body.jobs.map((j: { jobId: string }) => j.jobId)).toEqual(['cancel-1']);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs?cursor=bogus')).status).toBe(400);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs?limit=0')).status).toBe(400);
      expect((await service.call(TOKENS.alice, 'GET', '/v1/jobs?status=done')).status).toBe(400);
    });

    it('uploads an image as multipart/form-data; the same bytes are the same attachment; a non-image is 400', async () => {
      const form = new FormData();
      form.append('file', new Blob([new Uint8Array(await inputPng())], { type: 'image/png' }), 'input.png');
      const upload = await service.call(TOKENS.alice, 'POST', '/v1/attachments', form);
      expect(upload.status).toBe(201);
      expect(upload.body).toMatchObject({ attachId: inputId, contentType: 'image/png', width: 32, height: 18 });
      const text = await service.call(TOKENS.alice, 'POST', '/v1/attachments', new TextEncoder().encode('not an image'), { 'content-type': 'application/octet-stream' });
      expect(text.status).toBe(400);
      expect(text.body.error.problems[0]).toMatchObject({ field: 'body', rule: 'the upload is not an image (PNG, JPEG, WebP, GIF, AVIF, TIFF)' });
    });

    it('grants credits with an admin token only; the caller reads its own balance', async () => {
      const denied = await service.call(TOKENS.alice, 'POST', '/v1/credits/alice', { amount: 5 });
      expect(denied.status).toBe(403);
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/dave', { amount: 0 })).status).toBe(400);
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/dave', { amount: '5' })).status).toBe(400);
      expect((await service.call(TOKENS.admin, 'POST', '/v1/credits/dave', { amount: 5 })).body).toEqual({ userId: 'dave', balance: 5, reserved: 0 });
      expect((await service.call(TOKENS.bob, 'GET', '/v1/credits?userId=alice')).status).toBe(400);
      expect((await service.call(TOKENS.admin, 'GET', '/v1/credits?userId=dave')).body.balance).toBe(5);
    });

    it('publishes an OpenAPI 3 document of its routes', async () => {
      const doc = await service.call(null, 'GET', '/openapi.json');
      expect(doc.status).toBe(200);
      expect(doc.body.openapi).toMatch(/^3\./);
      expect(Object.keys(doc.body.paths)).toEqual(
        expect.arrayContaining(['/v1/jobs', '/v1/jobs/{id}', '/v1/jobs/{id}/events', '/v1/jobs/{id}/images/{stage}/{slot}', '/v1/attachments', '/v1/credits', '/v1/credits/{userId}', '/healthz', '/readyz']),
      );
      expect(doc.body.paths['/v1/jobs'].post.requestBody.content['application/json'].schema).toBeDefined();
      expect(doc.body.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
    });

    it('never writes a token to its log', () => {
      const logs = service.logs();
      expect(logs).toContain('request completed');
      for (const token of Object.values(TOKENS)) expect(logs).not.toContain(token);
      expect(logs).not.toContain('not-a-known-token-000');
    });
  });
}
