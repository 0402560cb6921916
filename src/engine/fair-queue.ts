/**
 * Whose a waiter is, for fair sharing of a limiter's permits: a job of a user, at a
 * priority (higher goes first). Waiters with equal fields share one FIFO lane.
 */
export interface Share {
  readonly userId: string;
  readonly jobId: string;
  readonly priority: number;
}

/**
 * A queue of waiters that takes turns instead of first come first served: the highest
 * priority that has waiters goes first; within a priority, users take turns; within a
 * user, its jobs take turns; within a job, first in first out. Pure: no RxJS, no clock.
 *
 * Turns are round robin in order of arrival: at each priority the next user is the one
 * after the user served last, and the same for a user's jobs. A user with 10 waiters
 * queued before another user's 2 does not make those 2 wait for its 10. The user served
 * last still counts as served last when its queue ran empty (a limiter with free
 * permits serves each first waiter at once): if it queues again, a user that arrived
 * meanwhile goes first. Any other user whose waiters are all gone leaves the turn and,
 * when it comes back, joins at the end.
 *
 * `dequeue(eligible)` skips shares the predicate refuses (a user at its cap): the turn
 * goes to the next eligible user, at this priority or a lower one, and a skipped user
 * keeps its place. `undefined` when nothing (eligible) waits.
 *
 * Cost: enqueue and `remove` are O(1) (a job's lane is a linked list, so dropping 150 of
 * 1,000 queued waiters at once is 150 unlinks), except when a lane empties (O(users) or
 * O(jobs of the user) to leave the turn); `dequeue` is O(users at the priority) at worst,
 * times their jobs when `eligible` skips some. Memory: the waiters, plus per priority
 * ever used the user (and its job) served last.
 *
 * ```
 * enqueue  a1 a2 a3 (user A, job a)   b1 b2 (user B, job b)   h1 (user C, priority 1)
 * dequeue  h1 a1 b1 a2 b2 a3          priority first, then A and B take turns
 * ```
 *
 * @example
 * const queue = new FairQueue<string>();
 * queue.enqueue('a1', { userId: 'A', jobId: 'a', priority: 0 });
 * queue.enqueue('a2', { userId: 'A', jobId: 'a', priority: 0 });
 * queue.enqueue('b1', { userId: 'B', jobId: 'b', priority: 0 });
 * queue.dequeue(); // 'a1'
 * queue.dequeue(); // 'b1' (B's turn, though a2 came first)
 */
export class FairQueue<T> {
  readonly #nodes = new Map<T, Node<T>>();
  /** Every priority that has waiters, or remembers whom it served last. */
  readonly #levels = new Map<number, Level<T>>();
  /** Priorities that have waiters, highest first. */
  readonly #priorities: number[] = [];

  /** Waiters queued. */
  get size(): number {
    return this.#nodes.size;
  }

  get isEmpty(): boolean {
    return this.#nodes.size === 0;
  }

  /** Queues `item` (at most once: an item is its own handle for `remove`) at the end of its job's lane. */
  enqueue(item: T, share: Share): void {
    if (this.#nodes.has(item)) throw new Error('FairQueue: this item is already queued');
    if (!Number.isFinite(share.priority)) throw new RangeError(`FairQueue: priority must be a finite number, got ${share.priority}`);
    const level = this.#level(share.priority);
    let user = level.byUser.get(share.userId);
    if (!user) {
      user = { userId: share.userId, level, waiting: 0, byJob: new Map(), jobs: new Ring((lane) => user!.byJob.delete(lane.share.jobId)) };
      level.byUser.set(share.userId, user);
      level.users.add(user);
    }
    let lane = user.byJob.get(share.jobId);
    if (!lane) {
      lane = { share, user, head: undefined, tail: undefined };
      user.byJob.set(share.jobId, lane);
      user.jobs.add(lane);
    }
    const node: Node<T> = { item, lane, prev: lane.tail, next: undefined };
    if (lane.tail) lane.tail.next = node;
    else {
      lane.head = node;
      user.jobs.rejoin(lane);
    }
    lane.tail = node;
    this.#nodes.set(item, node);
    if (user.waiting++ === 0) level.users.rejoin(user);
    if (level.waiting++ === 0) this.#activate(level.priority);
  }

  /**
   * Takes the next waiter by turn (see the class comment); only from shares `eligible`
   * accepts, when given. `undefined` when no (eligible) waiter is queued.
   */
  dequeue(eligible?: (share: Share) => boolean): T | undefined {
    const head = (lane: Lane<T>) => (lane.head !== undefined && (eligible === undefined || eligible(lane.share)) ? lane.head : undefined);
    for (const priority of this.#priorities) {
      const node = this.#levels.get(priority)!.users.take((user) => (user.waiting > 0 ? user.jobs.take(head) : undefined));
      if (node) {
        this.#unlink(node);
        return node.item;
      }
    }
    return undefined;
  }

  /** Takes `item` out wherever it waits (its subscriber left); false when it was not queued. */
  remove(item: T): boolean {
    const node = this.#nodes.get(item);
    if (!node) return false;
    this.#unlink(node);
    return true;
  }

  #level(priority: number): Level<T> {
    let level = this.#levels.get(priority);
    if (!level) {
      const byUser = new Map<string, UserLanes<T>>();
      level = { priority, waiting: 0, byUser, users: new Ring((user) => byUser.delete(user.userId)) };
      this.#levels.set(priority, level);
    }
    return level;
  }

  #activate(priority: number): void {
    let at = 0;
    while (at < this.#priorities.length && this.#priorities[at]! > priority) at++;
    this.#priorities.splice(at, 0, priority);
  }

  // An empty lane or user leaves its turn (the rings keep only the one served last, to
  // know whose turn is next), so a long-lived queue does not grow with every job and
  // user it ever saw. A priority without waiters leaves `#priorities` at once.
  #unlink(node: Node<T>): void {
    this.#nodes.delete(node.item);
    const { lane } = node;
    const { user } = lane;
    const { level } = user;
    if (node.prev) node.prev.next = node.next;
    else lane.head = node.next;
    if (node.next) node.next.prev = node.prev;
    else lane.tail = node.prev;
    if (!lane.head) user.jobs.leave(lane);
    if (--user.waiting === 0) level.users.leave(user);
    if (--level.waiting === 0) this.#priorities.splice(this.#priorities.indexOf(level.priority), 1);
  }
}

interface Node<T> {
  readonly item: T;
  readonly lane: Lane<T>;
  prev: Node<T> | undefined;
  next: Node<T> | undefined;
}

/** One job's waiters at one priority, FIFO. */
interface Lane<T> {
  readonly share: Share;
  readonly user: UserLanes<T>;
  head: Node<T> | undefined;
  tail: Node<T> | undefined;
}

interface UserLanes<T> {
  readonly userId: string;
  readonly level: Level<T>;
  waiting: number;
  readonly byJob: Map<string, Lane<T>>;
  readonly jobs: Ring<Lane<T>>;
}

interface Level<T> {
  readonly priority: number;
  waiting: number;
  readonly byUser: Map<string, UserLanes<T>>;
  readonly users: Ring<UserLanes<T>>;
}

/**
 * Members in order of arrival, taking turns: the next turn starts after the member
 * served last. A member with nothing left waiting leaves (`evict` is told), except the
 * one served last: it keeps its place, marking where the next turn starts, until
 * another member is served or it has waiters again (`rejoin`). Without that, a user
 * whose only waiter was just served, and who queues again, would go before a user who
 * arrived in between.
 */
class Ring<E> {
  readonly #members: E[] = [];
  readonly #evict: (member: E) => void;
  /** Index of the member served last; -1 before the first turn. */
  #last = -1;
  /** The member at `#last` has nothing waiting: it stays only as the turn's marker. */
  #lastLeft = false;

  constructor(evict: (member: E) => void) {
    this.#evict = evict;
  }

  add(member: E): void {
    this.#members.push(member);
  }

  /** `member` has waiters again; only the one served last can still be here after leaving. */
  rejoin(member: E): void {
    if (this.#lastLeft && this.#members[this.#last] === member) this.#lastLeft = false;
  }

  /** `member` has nothing waiting. */
  leave(member: E): void {
    const at = this.#members.indexOf(member);
    if (at < 0) return;
    if (at === this.#last) {
      this.#lastLeft = true;
      return;
    }
    this.#remove(at);
  }

  /** The first answer of `pick`, asking members in turn order; the member that answered is served. */
  take<R>(pick: (member: E) => R | undefined): R | undefined {
    const n = this.#members.length;
    for (let k = 1; k <= n; k++) {
      let at = (this.#last + k) % n;
      const answer = pick(this.#members[at]!);
      if (answer === undefined) continue;
      if (this.#lastLeft && at !== this.#last) {
        // The marker's job is done: the member after it has been served.
        const marker = this.#last;
        this.#lastLeft = false;
        this.#remove(marker);
        if (at > marker) at--;
      }
      this.#last = at;
      return answer;
    }
    return undefined;
  }

  #remove(at: number): void {
    const [member] = this.#members.splice(at, 1);
    // Removing a member before the one served last keeps the turn where it was.
    if (at < this.#last) this.#last--;
    this.#evict(member!);
  }
}
