/**
 * The user's spendable balance and the credits reserved by unfinished jobs.
 * A user without an account has `{ balance: 0, reserved: 0 }`. A plain read: no lock.
 */
export async function getBalance(database, userId) {
    const row = await database.db
        .selectFrom('credit_accounts')
        .select(['balance', 'reserved'])
        .where('user_id', '=', userId)
        .executeTakeFirst();
    return { balance: row?.balance ?? 0, reserved: row?.reserved ?? 0 };
}
