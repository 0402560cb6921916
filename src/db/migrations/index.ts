import type { Migration } from 'kysely/migration';
import { initial } from './0001-initial.js';
import { jobLease } from './0002-job-lease.js';
import { abandonedAttempts } from './0003-abandoned-attempts.js';
import { creditBigint } from './0004-credit-bigint.js';
import { fleet } from './0005-fleet.js';
import { jobEvents } from './0006-job-events.js';
import { webhooks } from './0007-webhooks.js';
import { serviceSecrets } from './0008-service-secrets.js';
import { attemptCost } from './0010-attempt-cost.js';
import { jobsByUserCreated } from './0011-jobs-by-user-created.js';
import { batches } from './0012-batches.js';
import { deliverSlotFunction } from './0013-deliver-slot-function.js';
import { failAttemptFunction } from './0014-fail-attempt-function.js';

/**
 * Every migration, keyed by a numbered name. Names sort in the order they run;
 * never rename or edit one that has shipped, add the next number instead.
 */
export const MIGRATIONS: Readonly<Record<string, Migration>> = Object.freeze({
  '0001_initial': initial,
  '0002_job_lease': jobLease,
  '0003_abandoned_attempts': abandonedAttempts,
  '0004_credit_bigint': creditBigint,
  '0005_fleet': fleet,
  '0006_job_events': jobEvents,
  '0007_webhooks': webhooks,
  '0008_service_secrets': serviceSecrets,
  '0010_attempt_cost': attemptCost,
  '0011_jobs_by_user_created': jobsByUserCreated,
  '0012_batches': batches,
  '0013_deliver_slot_function': deliverSlotFunction,
  '0014_fail_attempt_function': failAttemptFunction,
});
