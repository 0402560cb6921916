import type { AttemptCost } from '../domain/events.js';
import type { TokenUsage } from '../domain/ports.js';
import type { AttemptPricing, PricedRequest } from '../domain/price-table.js';

/** Below this a sum of floats equals the cap (prices like 0.039 do not add up exactly in binary). */
const EPSILON_USD = 1e-9;

/**
 * A job's spend cap (`maxCostUsd`): the books the engine asks before each attempt. Pure:
 * no RxJS, no clock. Shared by every stage of the job, like `JobControl`.
 *
 * `spent` is what the job's answers cost (earlier runs included: the caller reads it from
 * the attempts table when the run starts) plus what timed-out calls may have cost;
 * `inFlight` is the estimate of every attempt sent and not yet answered. An attempt
 * starts only when `spent + inFlight + its estimate <= maxUsd`; when it answers, its
 * estimate leaves `inFlight` and its cost joins `spent`.
 *
 * ```
 * maxUsd 0.10, estimate 0.04 each:
 * reserve(0.04) -> true   (0 + 0 + 0.04)
 * reserve(0.04) -> true   (0 + 0.04 + 0.04)
 * reserve(0.04) -> false  (0 + 0.08 + 0.04 > 0.10): the job stops starting attempts
 * settle(0.04, 0.039); settle(0.04, 0.039)   -> spent 0.078, inFlight 0
 * ```
 */
export class CostCap {
  #spentUsd: number;
  #inFlightUsd = 0;

  constructor(
    /** The cap, USD (> 0). */
    readonly maxUsd: number,
    /** What the job spent before this run. */
    spentUsd = 0,
  ) {
    if (!(maxUsd > 0) || !Number.isFinite(maxUsd)) throw new RangeError(`maxUsd must be a positive number, got ${maxUsd}`);
    this.#spentUsd = Math.max(0, spentUsd);
  }

  /** What the job's answers cost so far (and its possibly billed timeouts), USD. */
  get spentUsd(): number {
    return this.#spentUsd;
  }

  /** Estimates of the attempts in flight, USD. */
  get inFlightUsd(): number {
    return this.#inFlightUsd;
  }

  /**
   * Whether one more attempt, estimated at `estimateUsd`, stays within the cap; if so its
   * estimate is reserved (in flight). A null estimate (a model with no price) never fits:
   * a cap that cannot be checked spends nothing.
   */
  reserve(estimateUsd: number | null): boolean {
    if (estimateUsd === null) return false;
    if (this.#spentUsd + this.#inFlightUsd + estimateUsd > this.maxUsd + EPSILON_USD) return false;
    this.#inFlightUsd += estimateUsd;
    return true;
  }

  /** An attempt reserved at `estimateUsd` ended having cost `costUsd` (0: not billed). */
  settle(estimateUsd: number, costUsd: number): void {
    this.#inFlightUsd = Math.max(0, this.#inFlightUsd - estimateUsd);
    this.#spentUsd += Math.max(0, costUsd);
  }
}

/** How an attempt ended, as far as its cost goes. */
export interface AttemptEnding {
  /** What the provider reported for its answer (an image, or a failed answer such as a safety block). */
  readonly usage: TokenUsage | null | undefined;
  /** The provider answered (an image arrived, or a failure that came with usage). */
  readonly answered: boolean;
  /** The call timed out: the provider may still bill it. */
  readonly timedOut: boolean;
}

/**
 * What one attempt cost: an answer is priced from its usage (no usage: the estimate), a
 * timed-out call is possibly billed at one image's price, anything else (refused, rate
 * limited, a network error before an answer) cost nothing.
 *
 * ```
 * answered, usage {prompt 12, images 1}      -> usd 0.039 + 12 x 0.30/1M, possiblyBilled 0
 * timed out, no usage                        -> usd null, possiblyBilled 0.039
 * 429                                        -> usd null, possiblyBilled 0
 * ```
 */
export function attemptCostOf(pricing: AttemptPricing, request: PricedRequest, ending: AttemptEnding): AttemptCost {
  if (ending.answered || ending.usage != null) return { model: pricing.model, usd: pricing.costUsd(request, ending.usage), possiblyBilledUsd: 0 };
  if (ending.timedOut) return { model: pricing.model, usd: null, possiblyBilledUsd: pricing.possiblyBilledUsd(request) ?? 0 };
  return { model: pricing.model, usd: null, possiblyBilledUsd: 0 };
}

/** What a cost counts against the cap: its answer and what it may have been billed. */
export function chargedUsd(cost: AttemptCost): number {
  return (cost.usd ?? 0) + cost.possiblyBilledUsd;
}

/** What a stage needs to price its attempts and keep the job's spend cap. */
export interface StageCost {
  readonly pricing: AttemptPricing;
  /** The job's cap, shared by its stages; null: no cap (costs are still reported). */
  readonly cap: CostCap | null;
}

/**
 * One stage's side of the spend cap and the prices: `admit` reserves an attempt's estimate
 * before it is sent (undefined without a cap), `priced` prices its end and gives the
 * reservation back against what it cost. Both stage operators (`fillSlots`,
 * `fillBatchRounds`) keep their books through it. At most one attempt per slot is out.
 *
 * ```
 * admit(slot 0) -> true (0.04 reserved); priced(slot 0, answered) -> { usd 0.039 }, cap settled
 * ```
 */
export class StageCostBook {
  readonly #cost: StageCost | undefined;
  /** By slot: the estimate held for its attempt out. */
  readonly #reserved = new Map<number, number>();
  /** Reserves the attempt's estimate; false when it does not fit the cap. Undefined: no cap, every attempt fits. */
  readonly admit: ((request: PricedRequest & { readonly slotIndex: number }) => boolean) | undefined;

  constructor(cost: StageCost | undefined) {
    this.#cost = cost;
    const cap = cost?.cap;
    this.admit =
      cost !== undefined && cap != null
        ? (request) => {
            const estimate = cost.pricing.estimateUsd(request);
            if (estimate === null || !cap.reserve(estimate)) return false;
            this.#reserved.set(request.slotIndex, estimate);
            return true;
          }
        : undefined;
  }

  /** What the attempt cost (undefined without prices); its reservation, if any, is settled. */
  priced(request: PricedRequest & { readonly slotIndex: number }, ending: AttemptEnding): AttemptCost | undefined {
    const cost = this.#cost;
    if (cost === undefined) return undefined;
    const attemptCost = attemptCostOf(cost.pricing, request, ending);
    const estimate = this.#reserved.get(request.slotIndex);
    if (estimate !== undefined) {
      this.#reserved.delete(request.slotIndex);
      cost.cap?.settle(estimate, chargedUsd(attemptCost));
    }
    return attemptCost;
  }
}
