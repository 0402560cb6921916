/** The arithmetic of one provider limit shared by a fleet (src/engine/fleet-share.ts), in plain tables. */
import { describe, expect, it } from 'vitest';
import { fairTargets, nextHeldShare, stepSharedLimit, type SharedLimitState } from '../../src/engine/fleet-share.js';

const at = (limit: number, extra: Partial<SharedLimitState> = {}): SharedLimitState => ({ limit, successes: 0, epoch: 3, lastCutAt: 0, ...extra });

describe('stepSharedLimit (AIMD with a slow probe near the last cut)', () => {
  it.each([
    // [state, report, max, expected limit, expected epoch, expected lastCutAt]
    ['a 429 under the current epoch, below the last cut, cuts x0.7 and remembers where', at(10, { lastCutAt: 12 }), { rateLimitedAt: 3, successes: 0 }, 16, 7, 4, 10],
    ["the key's first 429 ever (no cut yet: the fleet grew to the wall one step at a time) steps back by one", at(7), { rateLimitedAt: 3, successes: 0 }, 16, 6, 4, 7],
    ['a 429 under an older epoch (same burst) changes nothing', at(7, { epoch: 4, lastCutAt: 10 }), { rateLimitedAt: 3, successes: 0 }, 16, 7, 4, 10],
    ['never below 1', at(1, { lastCutAt: 2 }), { rateLimitedAt: 3, successes: 0 }, 16, 1, 4, 1],
    ['... also on a first 429 at 1', at(1), { rateLimitedAt: 3, successes: 0 }, 16, 1, 4, 1],
    ['a failed probe (at the last cut) steps back by one', at(8, { lastCutAt: 8 }), { rateLimitedAt: 3, successes: 0 }, 16, 7, 4, 8],
    ['... also above it', at(9, { lastCutAt: 8 }), { rateLimitedAt: 3, successes: 0 }, 16, 8, 4, 9],
    ['a 429 just below the last cut: the wall moved down, x0.7', at(7, { lastCutAt: 8 }), { rateLimitedAt: 3, successes: 0 }, 16, 4, 4, 7],
    ['limit successes below the last cut add one (growth keeps the epoch: only cuts move it)', at(4, { lastCutAt: 8 }), { rateLimitedAt: null, successes: 4 }, 16, 5, 3, 8],
    ['fewer successes wait', at(4, { lastCutAt: 8 }), { rateLimitedAt: null, successes: 3 }, 16, 4, 3, 8],
    ['just below the last cut, one step needs 16x limit successes', at(7, { lastCutAt: 8 }), { rateLimitedAt: null, successes: 7 }, 16, 7, 3, 8],
    ['... and takes it with them', at(7, { lastCutAt: 8, successes: 105 }), { rateLimitedAt: null, successes: 7 }, 16, 8, 3, 8],
    ['a first 429 reported after the limit grew past what the refused call ran under steps back from that one', at(8), { rateLimitedAt: 3, rateLimitedLimit: 7, successes: 0 }, 16, 6, 4, 7],
    ['... and a probe that failed under 7 while the limit is 8 (above the last cut, 7) too', at(8, { lastCutAt: 7 }), { rateLimitedAt: 3, rateLimitedLimit: 7, successes: 0 }, 16, 6, 4, 7],
    ['a worker that knew a higher limit than now: from the limit now', at(5, { lastCutAt: 8 }), { rateLimitedAt: 3, rateLimitedLimit: 9, successes: 0 }, 16, 3, 4, 5],
    ['a 429 seen before growth steps the worker has not heard of still cuts (same epoch)', at(9, { lastCutAt: 12 }), { rateLimitedAt: 3, successes: 0 }, 16, 6, 4, 9],
    ['never above max', at(16), { rateLimitedAt: null, successes: 100 }, 16, 16, 3, 0],
    ['a max that dropped (a worker left) clamps it, which is no cut', at(16), { rateLimitedAt: null, successes: 0 }, 8, 8, 3, 0],
  ] as const)('%s', (_title, state, report, max, limit, epoch, lastCutAt) => {
    const next = stepSharedLimit(state, report, { min: 1, max });
    expect({ limit: next.limit, epoch: next.epoch, lastCutAt: next.lastCutAt }).toEqual({ limit, epoch, lastCutAt });
  });
});

describe('fairTargets (max-min fair split)', () => {
  it.each([
    ['equal demands split evenly', 6, { a: 8, b: 8 }, { a: 3, b: 3 }],
    ['an odd limit: the remainder goes in id order', 7, { a: 8, b: 8 }, { a: 4, b: 3 }],
    ['a small demand is met, the rest goes to the big one', 8, { a: 8, b: 2 }, { a: 6, b: 2 }],
    ['no demand, nothing', 8, { a: 0, b: 3 }, { a: 0, b: 3 }],
    ['more limit than demand: the rest stays unassigned', 20, { a: 4, b: 3 }, { a: 4, b: 3 }],
    ['three workers, limit 6', 6, { a: 8, b: 8, c: 8 }, { a: 2, b: 2, c: 2 }],
  ] as const)('%s', (_title, limit, demands, expected) => {
    const targets = fairTargets(limit, Object.entries(demands).map(([id, demand]) => ({ id, demand })));
    expect(Object.fromEntries(targets)).toEqual(expected);
  });
});

describe('nextHeldShare', () => {
  it.each([
    ['the target, when the others leave room', { target: 3, limit: 6, othersHeld: 3, inFlight: 0 }, { limit: 3, held: 3 }],
    ['only what the others do not hold', { target: 3, limit: 6, othersHeld: 5, inFlight: 0 }, { limit: 1, held: 1 }],
    ['nothing when they hold it all', { target: 3, limit: 6, othersHeld: 6, inFlight: 0 }, { limit: 0, held: 0 }],
    ['calls still in flight stay counted as held', { target: 2, limit: 6, othersHeld: 0, inFlight: 5 }, { limit: 2, held: 5 }],
    // The rebalance is a round trip: until its share lands, calls start under the old local limit.
    ['a lowered share still counts the old local limit as held, until the next rebalance', { target: 1, limit: 6, othersHeld: 2, inFlight: 1, localLimit: 4 }, { limit: 1, held: 4 }],
  ] as const)('%s', (_title, input, expected) => {
    expect(nextHeldShare(input)).toEqual(expected);
  });
});
