/** The single rule that decides a job's status from its stages. */
export function jobStatusOf(stages, cancelled) {
    if (stages.every((s) => s.delivered === s.quantity && s.shortfall === null))
        return 'completed';
    if (cancelled)
        return 'cancelled';
    return stages.some((s) => s.delivered > 0) ? 'partial' : 'failed';
}
