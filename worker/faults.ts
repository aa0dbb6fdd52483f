/**
 * Network faults for the fleet simulator, applied between a worker and the
 * database. A partition cuts the control plane (heartbeats and claims) while
 * the device writes still reach the database, the case the fencing exists for.
 *
 * It also reports every session write with the (server, epoch) it carried and
 * whether the database took it, so the chaos run can check that none was
 * accepted from a server that no longer held the device.
 */
import { type BackendApi, BackendError } from "@device-qr/backend";

/** One `device_session_write` as the worker sent it, and the database's answer. */
export type SessionWriteEvent = {
  type: "session_write";
  deviceId: string;
  serverId: string;
  epoch: number;
  entries: number;
  attemptedAt: number;
  accepted: boolean;
  code?: string;
};

export class FaultyBackend implements BackendApi {
  partitioned = false;

  constructor(
    private readonly inner: BackendApi,
    private readonly onSessionWrite: (event: SessionWriteEvent) => void = () => {},
  ) {}

  #cut(): void {
    if (this.partitioned) {
      throw new BackendError("unavailable", "partitioned by the fleet simulator");
    }
  }

  heartbeat(...args: Parameters<BackendApi["heartbeat"]>) {
    this.#cut();
    return this.inner.heartbeat(...args);
  }

  claimDevices(...args: Parameters<BackendApi["claimDevices"]>) {
    this.#cut();
    return this.inner.claimDevices(...args);
  }

  publishQr(...args: Parameters<BackendApi["publishQr"]>) {
    return this.inner.publishQr(...args);
  }

  publishPairingCode(...args: Parameters<BackendApi["publishPairingCode"]>) {
    return this.inner.publishPairingCode(...args);
  }

  reportStatus(...args: Parameters<BackendApi["reportStatus"]>) {
    return this.inner.reportStatus(...args);
  }

  shutdown(...args: Parameters<BackendApi["shutdown"]>) {
    return this.inner.shutdown(...args);
  }

  // Like publishQr: a partitioned server's late writes still arrive, for the fence to refuse.
  async writeSession(...args: Parameters<BackendApi["writeSession"]>) {
    const [write, entries] = args;
    const event = {
      type: "session_write" as const,
      ...write,
      entries: entries.length,
      attemptedAt: Date.now(),
    };
    try {
      const result = await this.inner.writeSession(...args);
      this.onSessionWrite({ ...event, accepted: true });
      return result;
    } catch (error) {
      const code = error instanceof BackendError ? error.code : "unexpected";
      this.onSessionWrite({ ...event, accepted: false, code });
      throw error;
    }
  }

  readSession(...args: Parameters<BackendApi["readSession"]>) {
    return this.inner.readSession(...args);
  }
}
