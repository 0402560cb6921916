import { sql } from 'kysely';
import type { Database } from '../database.js';
import { InsufficientCreditsError } from '../errors.js';
import { abandonStartedAttempts } from '../internal/abandon-started-attempts.js';
import { lockCreditAccount } from '../internal/lock-credit-account.js';

export interface ReopenedJob {
  /** Attempts marked `abandoned`. */
  readonly abandoned: number;
  /** Credits reserved again for the missing images. */
  readonly reserved: number;
}

/**
 * Repairs a job that ended short only because attempts of dead runs were charged to
 * its budget (jobs that ended before attempts could be `abandoned`): it ended
 * `partial` or `failed`, a stage is short with `budget_exhausted`, and attempts are
 * still `started`. Those attempts become `abandoned`, the missing images are
 * reserved again (a new reservation round), the short stages and the job reopen
 * (`queued`), and the next run recomputes the budget without them. Any other job is
 * left alone (null).
 *
 * One transaction. Locking: the job row `for update` first, then the user's account
 * (`lockCreditAccount`), the same order as `finishJob`.
 *
 * @throws {InsufficientCreditsError} the user cannot pay for the missing images.
 */
export async function reopenJob(database: Database, jobId: string): Promise<ReopenedJob | null> {
  return database.db.transaction().execute(async (trx) => {
    const job = await trx
      .selectFrom('jobs')
      .select(['user_id', 'status', 'total', 'delivered', 'price_per_image', 'reopened'])
      .where('id', '=', jobId)
      .forUpdate()
      .executeTakeFirst();
    if (!job || (job.status !== 'partial' && job.status !== 'failed')) return null;
    const evidence = await sql<{ started: number; exhausted: number }>`
      select
        (select count(*) from attempts where job_id = ${jobId} and outcome = 'started')::int as started,
        (select count(*) from stages where job_id = ${jobId} and status = 'short' and shortfall_reason = 'budget_exhausted')::int as exhausted`.execute(trx);
    const row = evidence.rows[0];
    if (!row || row.started === 0 || row.exhausted === 0) return null;

    const abandoned = await abandonStartedAttempts(trx, jobId);
    const price = (job.total - job.delivered) * job.price_per_image;
    const account = await lockCreditAccount(trx, job.user_id);
    if (account.balance < price) throw new InsufficientCreditsError(job.user_id, price, account.balance);
    const round = job.reopened + 1;
    await trx
      .updateTable('credit_accounts')
      .set((eb) => ({ balance: eb('balance', '-', price), reserved: eb('reserved', '+', price), updated_at: sql`now()` }))
      .where('user_id', '=', job.user_id)
      .execute();
    await trx.insertInto('credit_ledger').values({ user_id: job.user_id, kind: 'reserve', amount: price, job_id: jobId, round }).execute();
    await trx
      .updateTable('stages')
      .set({ status: 'running', shortfall_count: null, shortfall_reason: null, shortfall_error_class: null })
      .where('job_id', '=', jobId)
      .where('status', '=', 'short')
      .execute();
    await trx
      .updateTable('jobs')
      .set((eb) => ({
        status: 'queued',
        reopened: round,
        credits_reserved: eb('credits_reserved', '+', price),
        result_attach_ids: null,
        error: null,
        finished_at: null,
        crash_resumes: 0,
        updated_at: sql`now()`,
      }))
      .where('id', '=', jobId)
      .execute();
    return { abandoned, reserved: price };
  });
}
