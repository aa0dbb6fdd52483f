/**
 * Long-polling without holding anything: each re-check is one short RPC, and
 * between checks the function only sleeps, so no database connection or
 * transaction stays open while a client waits for its QR.
 */
import type { Clock } from "../_shared/clock.ts";

/** First re-check comes quickly (a QR often lands within a second), later ones back off. */
export const FIRST_DELAY_MS = 250;
export const MAX_DELAY_MS = 2000;
const GROWTH = 1.6;

/**
 * Delay before re-check number `attempt` (0-based): exponential backoff with
 * "equal jitter", half fixed and half random, so polls of many clients that
 * started together spread out instead of hitting the database in waves.
 */
export function recheckDelayMs(attempt: number, random: number): number {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * GROWTH ** attempt);
  return Math.round(ceiling / 2 + (ceiling / 2) * random);
}

export interface LongPoll<S> {
  /** One re-check of the current state. */
  check: () => Promise<S>;
  /** The state the first check saw. */
  first: S;
  /** True when `first` is worth answering at once. */
  answerNow: (state: S) => boolean;
  /** Identity of a state; the poll ends when it differs from the first one's. */
  key: (state: S) => string;
  waitMs: number;
  clock: Clock;
  /** The client's request signal: a client that went away ends the poll. */
  signal?: AbortSignal;
}

export interface LongPollResult<S> {
  state: S;
  checks: number;
  aborted: boolean;
}

export async function pollUntilChanged<S>(poll: LongPoll<S>): Promise<LongPollResult<S>> {
  const { clock, signal } = poll;
  let state = poll.first;
  let checks = 0;
  if (poll.waitMs <= 0 || poll.answerNow(state)) return { state, checks, aborted: false };

  const deadline = clock.now() + poll.waitMs;
  const initialKey = poll.key(state);
  for (let attempt = 0;; attempt++) {
    const remaining = deadline - clock.now();
    if (remaining <= 0) return { state, checks, aborted: false };
    await clock.sleep(Math.min(recheckDelayMs(attempt, clock.random()), remaining), signal);
    if (signal?.aborted) return { state, checks, aborted: true };
    state = await poll.check();
    checks++;
    if (poll.key(state) !== initialKey) return { state, checks, aborted: false };
  }
}
