/**
 * Live per-stage progress on stderr: redrawn bars on a terminal, plain lines
 * (at most one per stage per `plainIntervalMs`, plus every stage end) otherwise.
 */
export class ProgressView {
    out;
    plainIntervalMs;
    #stages = new Map();
    #drawn = 0;
    #lastPlain = new Map();
    constructor(out, plainIntervalMs = 1000) {
        this.out = out;
        this.plainIntervalMs = plainIntervalMs;
    }
    get tty() {
        return Boolean(this.out.isTTY);
    }
    handle(event) {
        switch (event.type) {
            case 'job:started':
                for (const s of event.stages)
                    this.#stages.set(s.index, { quantity: s.quantity, delivered: s.delivered, failed: 0, state: 'running', note: '' });
                if (!this.tty)
                    this.out.write(`job ${event.jobId}: ${event.deliveredImages}/${event.totalImages} images already delivered, ${event.stages.length} stage(s)\n`);
                break;
            case 'slot:delivered': {
                const s = this.#stages.get(event.stage);
                if (s)
                    s.delivered = event.stageProgress.delivered;
                this.#plain(event.stage, false);
                break;
            }
            case 'attempt:failed': {
                const s = this.#stages.get(event.stage);
                if (s) {
                    s.failed++;
                    s.note = `${event.errorClass}${event.willRetry ? `, retry in ${event.delayMs} ms` : ''}`;
                }
                break;
            }
            case 'stage:completed':
            case 'stage:short': {
                const s = this.#stages.get(event.stage);
                if (s) {
                    s.state = event.type === 'stage:completed' ? 'completed' : 'short';
                    s.note = event.type === 'stage:short' ? `short ${event.missing}: ${event.reason}${event.errorClass ? ` (${event.errorClass})` : ''}` : '';
                }
                this.#plain(event.stage, true);
                break;
            }
            default:
                break;
        }
        if (this.tty)
            this.#draw();
    }
    #plain(stage, force) {
        if (this.tty)
            return;
        const s = this.#stages.get(stage);
        if (!s)
            return;
        const now = Date.now();
        if (!force && now - (this.#lastPlain.get(stage) ?? 0) < this.plainIntervalMs && s.delivered !== s.quantity)
            return;
        this.#lastPlain.set(stage, now);
        this.out.write(`stage ${stage}: ${s.delivered}/${s.quantity} delivered, ${s.failed} failed attempt(s)${s.state !== 'running' ? ` [${s.state}]` : ''}${s.note && s.state === 'short' ? ` ${s.note}` : ''}\n`);
    }
    #draw() {
        const width = Math.max(10, Math.min(40, (this.out.columns ?? 80) - 50));
        const lines = [...this.#stages.entries()].map(([index, s]) => {
            const filled = Math.round((s.delivered / s.quantity) * width);
            const bar = '#'.repeat(filled) + '-'.repeat(width - filled);
            return `stage ${index} [${bar}] ${s.delivered}/${s.quantity} ${s.failed ? `(${s.failed} failed) ` : ''}${s.note}`.slice(0, (this.out.columns ?? 120) - 1);
        });
        if (this.#drawn > 0)
            this.out.write(`\x1b[${this.#drawn}A`);
        for (const line of lines)
            this.out.write(`\x1b[2K${line}\n`);
        this.#drawn = lines.length;
    }
}
