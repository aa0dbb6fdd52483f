/**
 * Time as the worker sees it. Injected so the lease and the QR rotation can be
 * tested with a fake clock instead of real waits.
 */
export interface Clock {
  /** Milliseconds since the Unix epoch. Never goes backwards. */
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/**
 * Wall time anchored once and advanced by the monotonic clock, so an NTP step
 * on the host cannot stretch or shrink a lease.
 */
export const systemClock: Clock = {
  now: () => performance.timeOrigin + performance.now(),
  sleep: (ms, signal) =>
    new Promise((resolve) => {
      if (signal?.aborted) return resolve();
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
      signal?.addEventListener("abort", done, { once: true });
    }),
};
