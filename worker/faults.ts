/**
 * Network faults for the fleet simulator, applied between a worker and the
 * database. A partition cuts the control plane (heartbeats and claims) while
 * the device writes still reach the database, the case the fencing exists for.
 */
import { type BackendApi, BackendError } from "../packages/backend/src/api.ts";

export class FaultyBackend implements BackendApi {
  partitioned = false;

  constructor(private readonly inner: BackendApi) {}

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
  writeSession(...args: Parameters<BackendApi["writeSession"]>) {
    return this.inner.writeSession(...args);
  }

  readSession(...args: Parameters<BackendApi["readSession"]>) {
    return this.inner.readSession(...args);
  }
}
