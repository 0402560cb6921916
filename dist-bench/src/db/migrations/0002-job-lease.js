import { sql } from 'kysely';
/**
 * A lease on a running job: which process runs it, until when. Two workers must not
 * run one job at once (a queue retry after a stall, a second `imagegen run`): the
 * deliveries would stay exact (unique constraints), but provider calls would be wasted
 * and one runner's orphan sweep could delete the other's uncommitted upload.
 */
export const jobLease = {
    async up(db) {
        await sql `alter table jobs add column lease_owner text`.execute(db);
        await sql `alter table jobs add column lease_until timestamptz`.execute(db);
    },
    async down(db) {
        await sql `alter table jobs drop column lease_until`.execute(db);
        await sql `alter table jobs drop column lease_owner`.execute(db);
    },
};
