/**
 * The worker's own view of its lease. The database considers the server live
 * until `last_health_ping + heartbeat_timeout`; the ping is written after we
 * sent the heartbeat, so `sentAt + timeout` is a lower bound of the real expiry
 * that needs no clock agreement with the database. We stop at a fraction of it
 * (default 80%) so the devices are dropped before anyone else can claim them.
 */
export class Lease {
  #validUntil = Number.NEGATIVE_INFINITY;
  #timeoutMs = 0;

  constructor(readonly safetyFraction = 0.8) {
    if (!(safetyFraction > 0 && safetyFraction < 1)) {
      throw new RangeError("safetyFraction must be between 0 and 1");
    }
  }

  /** Record a successful heartbeat that was *sent* at `sentAt`. */
  renew(sentAt: number, heartbeatTimeoutMs: number): void {
    this.#timeoutMs = heartbeatTimeoutMs;
    this.#validUntil = Math.max(
      this.#validUntil,
      sentAt + heartbeatTimeoutMs * this.safetyFraction,
    );
  }

  /** The database told us we are not live (e.g. `server_not_live`). */
  revoke(): void {
    this.#validUntil = Number.NEGATIVE_INFINITY;
  }

  isValid(now: number): boolean {
    return now < this.#validUntil;
  }

  get validUntil(): number {
    return this.#validUntil;
  }

  /** The last heartbeat timeout the database announced, 0 before the first heartbeat. */
  get heartbeatTimeoutMs(): number {
    return this.#timeoutMs;
  }
}
