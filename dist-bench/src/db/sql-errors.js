/** SQLSTATE 23505. Both `pg` and PGlite put the SQLSTATE in `error.code`. */
export function isUniqueViolation(error, constraint) {
    if (typeof error !== 'object' || error === null)
        return false;
    const { code, constraint: name } = error;
    return code === '23505' && (constraint === undefined || name === constraint);
}
