/**
 * A fake clock and an in-memory stand-in for the database side of the backend
 * contract: enough fencing to tell right from wrong, nothing more.
 */
import {
  type AssignedDevice,
  type BackendApi,
  BackendError,
  type Clock,
  type DeviceStatus,
  type Heartbeat,
  type HeartbeatInput,
  type SessionEntry,
} from "@device-qr/backend";

export class FakeClock implements Clock {
  constructor(public time = Date.UTC(2026, 0, 1)) {}
  now(): number {
    return this.time;
  }
  advance(ms: number): void {
    this.time += ms;
  }
  /** Sleeping advances the fake time at once. */
  sleep(ms: number): Promise<void> {
    this.time += ms;
    return Promise.resolve();
  }
}

export interface FakeDevice {
  id: string;
  owner: string | null;
  epoch: number;
  status: DeviceStatus | "reconnecting";
  lastError?: string | null;
  qr: string | null;
  qrExpiresAt: Date | null;
  /** The owner's pending request to link by phone number (digits), if any. */
  pairingPhone?: string | null;
  pairingCode?: { code: string; expiresAt: Date; epoch: number } | null;
}

export class FakeDatabase implements BackendApi {
  heartbeatTimeoutMs = 10_000;
  /** What heartbeats say of the next lease of another server to run out. */
  nextLeaseExpiryMs: number | null = null;
  devices = new Map<string, FakeDevice>();
  calls: string[] = [];
  /** When set, heartbeats throw this instead of answering. */
  heartbeatFailure: BackendError | null = null;
  /** When set, heartbeats wait for this before answering. */
  heartbeatDelay: Promise<void> | null = null;
  published: { deviceId: string; epoch: number; qr: string; expiresAt: Date }[] = [];
  /** The session store: device id → "type\u0000id" → value. */
  sessions = new Map<string, Map<string, string>>();
  pairingCodes: { deviceId: string; epoch: number; code: string; expiresAt: Date }[] = [];
  /** The database's clock, for the freshness of pairing codes. */
  now: () => number = Date.now;

  /** What `request_pairing_code` does: a new request retires the code shown so far. */
  requestPairingCode(id: string, phone: string): void {
    const device = this.devices.get(id)!;
    device.pairingPhone = phone;
    device.pairingCode = null;
  }

  /** Like claim_devices' `pairing_phone`: pending, and no fresh code at this epoch. */
  #pairingPhone(device: FakeDevice): string | null {
    if (!device.pairingPhone) return null;
    const code = device.pairingCode;
    const fresh = code && code.epoch === device.epoch && code.expiresAt.getTime() > this.now();
    return fresh ? null : device.pairingPhone;
  }

  addDevice(id: string, owner: string | null = null): FakeDevice {
    const device: FakeDevice = {
      id,
      owner,
      epoch: 1,
      status: "connecting",
      qr: null,
      qrExpiresAt: null,
    };
    this.devices.set(id, device);
    return device;
  }

  /** What another server (or `get_device_qr`) does when it takes a device. */
  reassign(id: string, to: string | null): void {
    const device = this.devices.get(id)!;
    device.owner = to;
    device.epoch += 1;
    device.qr = null;
  }

  heartbeats: HeartbeatInput[] = [];

  async heartbeat(input: HeartbeatInput): Promise<Heartbeat> {
    this.calls.push("heartbeat");
    this.heartbeats.push(input);
    if (this.heartbeatDelay) await this.heartbeatDelay;
    if (this.heartbeatFailure) throw this.heartbeatFailure;
    return {
      serverId: "server-a",
      heartbeatTimeoutMs: this.heartbeatTimeoutMs,
      connectingGraceMs: 45_000,
      leaseExpiresAt: new Date().toISOString(),
      nextLeaseExpiryMs: this.nextLeaseExpiryMs,
    };
  }

  claimLimits: number[] = [];

  /** Like the SQL: the server's own devices first, then orphans, `limit` rows in all. */
  claimDevices(serverId: string, limit: number): Promise<AssignedDevice[]> {
    this.calls.push("claim_devices");
    this.claimLimits.push(limit);
    const rows: AssignedDevice[] = [];
    // Sessions to resume first, then the devices it is pairing.
    for (const status of ["reconnecting", "connecting"] as const) {
      for (const device of this.devices.values()) {
        if (device.status !== status || device.owner !== serverId || rows.length >= limit) continue;
        rows.push({
          deviceId: device.id,
          epoch: device.epoch,
          deviceName: null,
          claimed: false,
          ...(status === "reconnecting"
            ? { resume: true }
            : { pairingPhone: this.#pairingPhone(device) }),
        });
      }
    }
    for (const device of this.devices.values()) {
      if (rows.length >= limit) break;
      if (device.status !== "connecting") continue;
      if (device.owner === null) {
        device.owner = serverId;
        device.epoch += 1;
        rows.push({
          deviceId: device.id,
          epoch: device.epoch,
          deviceName: null,
          claimed: true,
          pairingPhone: this.#pairingPhone(device),
        });
      }
    }
    return Promise.resolve(rows);
  }

  #fence(deviceId: string, serverId: string, epoch: number): FakeDevice {
    const device = this.devices.get(deviceId);
    if (!device) throw new BackendError("not_found", "not_found", 404);
    if (device.owner !== serverId || device.epoch !== epoch) {
      throw new BackendError("fenced", "fenced", 409);
    }
    return device;
  }

  publishQr(
    write: { deviceId: string; serverId: string; epoch: number; qr: string; expiresAt: Date },
  ): Promise<void> {
    this.calls.push("publish_device_qr");
    const device = this.#fence(write.deviceId, write.serverId, write.epoch);
    if (device.status !== "connecting") {
      throw new BackendError("not_connecting", "not_connecting", 409);
    }
    device.qr = write.qr;
    device.qrExpiresAt = write.expiresAt;
    this.published.push(write);
    return Promise.resolve();
  }

  publishPairingCode(
    write: { deviceId: string; serverId: string; epoch: number; code: string; expiresAt: Date },
  ): Promise<void> {
    this.calls.push("publish_device_pairing_code");
    const device = this.#fence(write.deviceId, write.serverId, write.epoch);
    if (device.status !== "connecting") {
      throw new BackendError("not_connecting", "not_connecting", 409);
    }
    if (!device.pairingPhone) {
      throw new BackendError("no_pairing_request", "no_pairing_request", 409);
    }
    device.pairingCode = { code: write.code, expiresAt: write.expiresAt, epoch: write.epoch };
    this.pairingCodes.push(write);
    return Promise.resolve();
  }

  reportStatus(
    write: { deviceId: string; serverId: string; epoch: number; status: DeviceStatus },
  ): Promise<void> {
    this.calls.push(`report_device_status:${write.status}`);
    const device = this.#fence(write.deviceId, write.serverId, write.epoch);
    // Like the SQL: logged_out is stored as disconnected, with that as the error.
    device.status = write.status === "logged_out" ? "disconnected" : write.status;
    device.lastError = write.status === "logged_out" ? "logged_out" : null;
    if (write.status !== "connecting") device.qr = null;
    // Like the SQL trigger: the number goes once the device leaves `connecting`.
    if (write.status !== "connecting") device.pairingPhone = device.pairingCode = null;
    // Like the SQL: a logged-out session is deleted, WhatsApp will not take it back.
    if (write.status === "logged_out") this.sessions.delete(write.deviceId);
    return Promise.resolve();
  }

  /** Like fenced_session_holder: the current holder, while the device has a session to write. */
  #sessionOf(write: { deviceId: string; serverId: string; epoch: number }): Map<string, string> {
    const device = this.#fence(write.deviceId, write.serverId, write.epoch);
    if (!["connecting", "connected", "reconnecting"].includes(device.status)) {
      throw new BackendError("fenced", "fenced", 409);
    }
    let session = this.sessions.get(device.id);
    if (!session) this.sessions.set(device.id, session = new Map());
    return session;
  }

  writeSession(
    write: { deviceId: string; serverId: string; epoch: number },
    entries: SessionEntry[],
  ): Promise<{ written: number; deleted: number }> {
    this.calls.push("device_session_write");
    const session = this.#sessionOf(write);
    // One batch is atomic and the last entry for a (type, id) wins, as in SQL.
    const batch = new Map(entries.map((e) => [`${e.type}\u0000${e.id}`, e.value]));
    let written = 0;
    let deleted = 0;
    for (const [key, value] of batch) {
      if (value === null) {
        if (session.delete(key)) deleted++;
      } else {
        session.set(key, value);
        written++;
      }
    }
    return Promise.resolve({ written, deleted });
  }

  readSession(
    write: { deviceId: string; serverId: string; epoch: number },
    type: string,
    ids: string[] | null,
  ): Promise<Record<string, string>> {
    this.calls.push("device_session_read");
    const session = this.#sessionOf(write);
    const found: Record<string, string> = {};
    for (const [key, value] of session) {
      const [entryType, id] = key.split("\u0000");
      if (entryType === type && (ids === null || ids.includes(id))) found[id] = value;
    }
    return Promise.resolve(found);
  }

  /** The database's session failover: the device moves to `to`, resumed if it has stored creds. */
  failOver(id: string, to: string): void {
    const device = this.devices.get(id)!;
    this.reassign(id, to);
    device.status = this.sessions.get(id)?.has("creds\u0000creds") ? "reconnecting" : "connecting";
  }

  shutdown(serverId: string): Promise<{ released: number; reassigned: number }> {
    this.calls.push("server_shutdown");
    let released = 0;
    for (const device of this.devices.values()) {
      if (device.owner === serverId && device.status === "connecting") {
        this.reassign(device.id, null);
        released++;
      }
    }
    return Promise.resolve({ released, reassigned: 0 });
  }
}
