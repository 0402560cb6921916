import { initial } from './0001-initial.js';
import { jobLease } from './0002-job-lease.js';
/**
 * Every migration, keyed by a numbered name. Names sort in the order they run;
 * never rename or edit one that has shipped, add the next number instead.
 */
export const MIGRATIONS = Object.freeze({
    '0001_initial': initial,
    '0002_job_lease': jobLease,
});
