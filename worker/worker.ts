/**
 * The reference backend worker: what one Railway/Baileys server must do so the
 * database can keep every device on a live server.
 *
 *   heartbeat loop  server_heartbeat        → renews our lease
 *   claim loop      claim_devices           → the devices we must work on now
 *   per device      publish_device_qr       → fenced by (server, epoch)
 *                   report_device_status    → fenced; `connected`, `qr_timeout`, …
 *   on SIGTERM      server_shutdown         → our devices go back to the pool at once
 *
 * Two rules keep a device from being paired by two servers at once: a fenced
 * write (`fenced`, `not_connecting`) drops that device immediately, and when
 * heartbeats stop succeeding the worker drops every device before its lease can
 * lapse in the database (see lease.ts).
 *
 * The class has no timers of its own in the steps (`heartbeat`, `claim`,
 * `work`); `run` drives them with the injected clock. Tests call the steps.
 */
import {
  type AssignedDevice,
  type BackendApi,
  BackendError,
  type DeviceStatus,
} from "../packages/backend/src/api.ts";
import { type Clock, systemClock } from "../packages/backend/src/clock.ts";
import { Lease } from "../packages/backend/src/lease.ts";
import {
  newPairingKeys,
  type PairingKeys,
  type PairingSchedule,
  qrTtlMs,
  WHATSAPP_PAIRING,
  whatsappQrPayload,
} from "./pairing.ts";

export interface WorkerConfig {
  serverName: string;
  /** Devices this server can hold; null means no limit. */
  maxCapacity: number | null;
  /** Upper bound for one `claim_devices` call. */
  claimLimit: number;
  /**
   * At most this many devices taken over per poll, so a fleet that starts
   * together (or survives a death) shares the orphans instead of the first
   * poller taking them all.
   */
  claimBatch: number;
  /** How often to ask for devices; a new orphan waits at most this long. */
  pollIntervalMs: number;
  /** Default: a quarter of the heartbeat timeout the database announces. */
  heartbeatIntervalMs?: number;
  /** Fraction of the heartbeat timeout after which we stop working unheard. */
  leaseSafetyFraction: number;
  /** Retry delay for a write that got no answer. */
  retryMs: number;
  /** How often `run` checks the lease and publishes due QRs. */
  tickMs: number;
  pairing: PairingSchedule;
  metadata: Record<string, unknown>;
  /**
   * Drop every device when the lease lapses unheard. Only the fleet simulator
   * turns this off, to play a server that wrongly believes it is still live
   * (a long GC pause, a frozen VM) and prove the database fences it anyway.
   */
  selfFencing: boolean;
}

export const DEFAULT_WORKER_CONFIG: Omit<WorkerConfig, "serverName"> = {
  maxCapacity: null,
  claimLimit: 100,
  claimBatch: 100,
  pollIntervalMs: 1_000,
  leaseSafetyFraction: 0.8,
  retryMs: 1_000,
  tickMs: 100,
  pairing: WHATSAPP_PAIRING,
  metadata: {},
  selfFencing: true,
};

export type WorkerEvent =
  | { type: "heartbeat"; serverId: string; heartbeatTimeoutMs: number; leaseValidUntil: number }
  | { type: "heartbeat_failed"; error: string }
  | { type: "session_started"; deviceId: string; epoch: number; claimed: boolean }
  | {
    type: "published";
    deviceId: string;
    epoch: number;
    qrIndex: number;
    expiresAt: string;
    attemptedAt: number;
  }
  | { type: "publish_rejected"; deviceId: string; epoch: number; code: string; attemptedAt: number }
  | { type: "status_reported"; deviceId: string; epoch: number; status: DeviceStatus }
  | { type: "session_dropped"; deviceId: string; epoch: number; reason: DropReason }
  | { type: "self_fenced"; devices: number; leaseValidUntil: number }
  | { type: "shutdown"; released: number; reassigned: number }
  | { type: "error"; step: string; error: string };

export type DropReason =
  | "fenced"
  | "not_found"
  | "not_connecting"
  | "lease_lapsed"
  | "released"
  | "new_epoch"
  | "connected"
  | "qr_timeout"
  | "shutdown";

/** One pairing attempt: the stand-in for a Baileys socket. */
interface Session {
  deviceId: string;
  epoch: number;
  keys: PairingKeys;
  /** QRs published so far. */
  qrsShown: number;
  nextActionAt: number;
  busy: boolean;
  /** Whether the device currently shows one of our QRs (a scan can succeed). */
  hasQr: boolean;
}

export interface WorkerSnapshot {
  serverName: string;
  serverId: string | null;
  leaseValid: boolean;
  leaseValidUntil: number | null;
  lastHeartbeatAt: number | null;
  devices: { deviceId: string; epoch: number; qrsShown: number }[];
}

export class BackendWorker {
  readonly config: WorkerConfig;
  readonly lease: Lease;
  #serverId: string | null = null;
  #sessions = new Map<string, Session>();
  #lastHeartbeatAt: number | null = null;
  #stopped = false;
  #abort = new AbortController();
  /** Cuts the heartbeat loop's sleep short when the database says we are not live. */
  #heartbeatNow = new AbortController();

  constructor(
    private readonly backend: BackendApi,
    config: Partial<WorkerConfig> & { serverName: string },
    private readonly clock: Clock = systemClock,
    private readonly onEvent: (event: WorkerEvent) => void = () => {},
  ) {
    this.config = { ...DEFAULT_WORKER_CONFIG, ...config };
    this.lease = new Lease(this.config.leaseSafetyFraction);
  }

  get serverId(): string | null {
    return this.#serverId;
  }

  get deviceIds(): string[] {
    return [...this.#sessions.keys()];
  }

  snapshot(): WorkerSnapshot {
    const now = this.clock.now();
    return {
      serverName: this.config.serverName,
      serverId: this.#serverId,
      leaseValid: this.lease.isValid(now),
      leaseValidUntil: Number.isFinite(this.lease.validUntil) ? this.lease.validUntil : null,
      lastHeartbeatAt: this.#lastHeartbeatAt,
      devices: [...this.#sessions.values()].map((s) => ({
        deviceId: s.deviceId,
        epoch: s.epoch,
        qrsShown: s.qrsShown,
      })),
    };
  }

  /** One heartbeat. Failure leaves the lease to run out on its own. */
  async heartbeat(): Promise<void> {
    const sentAt = this.clock.now();
    try {
      const beat = await this.backend.heartbeat({
        serverName: this.config.serverName,
        currentLoad: this.#sessions.size,
        // We never work on more than claimLimit devices at once; saying so
        // keeps the database from assigning us devices we would leave waiting.
        maxCapacity: this.config.maxCapacity ?? this.config.claimLimit,
        metadata: this.config.metadata,
      });
      if (this.#serverId !== null && beat.serverId !== this.#serverId) {
        // Our row was replaced: nothing we hold under the old id is ours.
        this.#dropAll("released");
      }
      this.#serverId = beat.serverId;
      this.#lastHeartbeatAt = this.clock.now();
      this.lease.renew(sentAt, beat.heartbeatTimeoutMs);
      this.onEvent({
        type: "heartbeat",
        serverId: beat.serverId,
        heartbeatTimeoutMs: beat.heartbeatTimeoutMs,
        leaseValidUntil: this.lease.validUntil,
      });
    } catch (error) {
      this.onEvent({ type: "heartbeat_failed", error: describe(error) });
    }
  }

  /**
   * Ask which devices are ours. The answer is the whole truth: a device we
   * work on that is missing from it was moved or finished, so we let it go.
   */
  async claim(): Promise<void> {
    const serverId = this.#serverId;
    if (this.#stopped || serverId === null || !this.lease.isValid(this.clock.now())) return;
    const limit = Math.min(
      this.config.claimLimit,
      this.config.maxCapacity ?? Number.POSITIVE_INFINITY,
      this.#sessions.size + this.config.claimBatch,
    );
    let assigned: AssignedDevice[];
    try {
      assigned = await this.backend.claimDevices(serverId, limit);
    } catch (error) {
      if (error instanceof BackendError && error.code === "server_not_live") {
        this.lease.revoke();
        this.#enforceLease();
        this.#heartbeatNow.abort();
      } else {
        this.onEvent({ type: "error", step: "claim", error: describe(error) });
      }
      return;
    }
    // The lease may have lapsed while we waited for the answer.
    if (!this.lease.isValid(this.clock.now()) || this.#stopped) return;

    // A full page may have left out some of our devices; only a short one is the whole list.
    const complete = assigned.length < limit;
    const current = new Map(assigned.map((device) => [device.deviceId, device]));
    for (const session of [...this.#sessions.values()]) {
      const device = current.get(session.deviceId);
      if (!device) {
        if (complete) this.#drop(session, "released");
      } else if (device.epoch !== session.epoch) this.#drop(session, "new_epoch");
    }
    for (const device of assigned) {
      if (device.resume) await this.#giveUpResume(device);
      else if (!this.#sessions.has(device.deviceId)) this.#start(device);
    }
  }

  /**
   * Enforce the lease, then publish every QR that is due and time out attempts
   * that ran out of QRs. Resolves when the writes it started have finished.
   */
  async work(): Promise<void> {
    if (!this.#enforceLease()) return;
    const now = this.clock.now();
    const due = [...this.#sessions.values()].filter((s) => !s.busy && s.nextActionAt <= now);
    await Promise.all(due.map((session) => this.#advance(session)));
  }

  /**
   * The user scanned the QR of this device (simulated): the socket opens and
   * we report `connected`. Returns false when we do not show a QR for it.
   */
  async scan(deviceId: string): Promise<boolean> {
    const session = this.#sessions.get(deviceId);
    if (!session || !session.hasQr || !this.#enforceLease()) return false;
    session.busy = true;
    const ok = await this.#report(session, "connected");
    if (ok && this.#sessions.get(deviceId) === session) this.#drop(session, "connected");
    session.busy = false;
    return ok;
  }

  /** Graceful stop: close every socket, then hand our devices back at once. */
  async shutdown(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#abort.abort();
    this.#dropAll("shutdown");
    if (this.#serverId === null) return;
    // A few quick retries: a deploy stops many servers at once, and an answer
    // lost now costs the devices a whole heartbeat timeout.
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        const result = await this.backend.shutdown(this.#serverId);
        this.onEvent({ type: "shutdown", ...result });
        return;
      } catch (error) {
        this.onEvent({ type: "error", step: "shutdown", error: describe(error) });
        if (attempt < 3) await this.clock.sleep(100 * attempt);
      }
    }
  }

  /** Drive the three loops until `shutdown`. */
  async run(): Promise<void> {
    const signal = this.#abort.signal;
    await this.heartbeat();
    const heartbeats = (async () => {
      while (!this.#stopped) {
        const wake = AbortSignal.any([signal, this.#heartbeatNow.signal]);
        await this.clock.sleep(this.#heartbeatIntervalMs(), wake);
        if (this.#heartbeatNow.signal.aborted) this.#heartbeatNow = new AbortController();
        if (!this.#stopped) await this.heartbeat();
      }
    })();
    const claims = (async () => {
      while (!this.#stopped) {
        await this.claim();
        await this.clock.sleep(this.config.pollIntervalMs, signal);
      }
    })();
    const ticks = (async () => {
      while (!this.#stopped) {
        // Not awaited: a hung write must not delay the lease check.
        this.work().catch((error) =>
          this.onEvent({ type: "error", step: "work", error: describe(error) })
        );
        await this.clock.sleep(this.config.tickMs, signal);
      }
    })();
    await Promise.all([heartbeats, claims, ticks]);
  }

  #heartbeatIntervalMs(): number {
    if (this.config.heartbeatIntervalMs) return this.config.heartbeatIntervalMs;
    const timeout = this.lease.heartbeatTimeoutMs || 30_000;
    return Math.max(250, Math.floor(timeout / 4));
  }

  /** Returns whether we may work; drops everything when we may not. */
  #enforceLease(): boolean {
    if (this.#stopped) return false;
    if (this.lease.isValid(this.clock.now()) || !this.config.selfFencing) return true;
    if (this.#sessions.size > 0) {
      this.onEvent({
        type: "self_fenced",
        devices: this.#sessions.size,
        leaseValidUntil: this.lease.validUntil,
      });
      this.#dropAll("lease_lapsed");
    }
    return false;
  }

  #start(device: AssignedDevice): void {
    const session: Session = {
      deviceId: device.deviceId,
      epoch: device.epoch,
      keys: newPairingKeys(),
      qrsShown: 0,
      nextActionAt: this.clock.now() + this.config.pairing.qrGenerationMs,
      busy: false,
      hasQr: false,
    };
    this.#sessions.set(device.deviceId, session);
    this.onEvent({
      type: "session_started",
      deviceId: device.deviceId,
      epoch: device.epoch,
      claimed: device.claimed,
    });
  }

  /**
   * The simulator stores no WhatsApp session, so it cannot resume one: it says
   * so (`logged_out`), and the device waits, disconnected, for its owner to pair
   * again, instead of coming back in every claim. A fenced answer means another
   * server holds the device now; anything else is retried by the next claim.
   */
  async #giveUpResume(device: AssignedDevice): Promise<void> {
    try {
      await this.backend.reportStatus({
        deviceId: device.deviceId,
        serverId: this.#serverId!,
        epoch: device.epoch,
        status: "logged_out",
        error: "no stored session to resume",
      });
      this.onEvent({
        type: "status_reported",
        deviceId: device.deviceId,
        epoch: device.epoch,
        status: "logged_out",
      });
    } catch (error) {
      const code = error instanceof BackendError ? error.code : "unexpected";
      if (!isDeviceGone(code)) {
        this.onEvent({ type: "error", step: "report_logged_out", error: describe(error) });
      }
    }
  }

  async #advance(session: Session): Promise<void> {
    session.busy = true;
    try {
      if (session.qrsShown < this.config.pairing.maxQrs) await this.#publishNext(session);
      else if (await this.#report(session, "qr_timeout")) this.#drop(session, "qr_timeout");
      else session.nextActionAt = this.clock.now() + this.config.retryMs;
    } finally {
      session.busy = false;
    }
  }

  async #publishNext(session: Session): Promise<void> {
    const attemptedAt = this.clock.now();
    const ttl = qrTtlMs(this.config.pairing, session.qrsShown);
    const expiresAt = new Date(attemptedAt + ttl);
    try {
      await this.backend.publishQr({
        deviceId: session.deviceId,
        serverId: this.#serverId!,
        epoch: session.epoch,
        qr: whatsappQrPayload(session.keys),
        expiresAt,
      });
    } catch (error) {
      const code = error instanceof BackendError ? error.code : "unexpected";
      this.onEvent({
        type: "publish_rejected",
        deviceId: session.deviceId,
        epoch: session.epoch,
        code,
        attemptedAt,
      });
      if (isDeviceGone(code)) this.#drop(session, code);
      else session.nextActionAt = this.clock.now() + this.config.retryMs;
      return;
    }
    if (this.#sessions.get(session.deviceId) !== session) return;
    this.onEvent({
      type: "published",
      deviceId: session.deviceId,
      epoch: session.epoch,
      qrIndex: session.qrsShown,
      expiresAt: expiresAt.toISOString(),
      attemptedAt,
    });
    session.qrsShown += 1;
    session.hasQr = true;
    session.nextActionAt = expiresAt.getTime();
  }

  /** A fenced status write; false when it did not go through. */
  async #report(session: Session, status: DeviceStatus): Promise<boolean> {
    try {
      await this.backend.reportStatus({
        deviceId: session.deviceId,
        serverId: this.#serverId!,
        epoch: session.epoch,
        status,
      });
      this.onEvent({
        type: "status_reported",
        deviceId: session.deviceId,
        epoch: session.epoch,
        status,
      });
      return true;
    } catch (error) {
      const code = error instanceof BackendError ? error.code : "unexpected";
      if (isDeviceGone(code)) this.#drop(session, code);
      else this.onEvent({ type: "error", step: `report_${status}`, error: describe(error) });
      return false;
    }
  }

  #drop(session: Session, reason: DropReason): void {
    if (this.#sessions.get(session.deviceId) !== session) return;
    this.#sessions.delete(session.deviceId);
    this.onEvent({
      type: "session_dropped",
      deviceId: session.deviceId,
      epoch: session.epoch,
      reason,
    });
  }

  #dropAll(reason: DropReason): void {
    for (const session of [...this.#sessions.values()]) this.#drop(session, reason);
  }
}

/** The database says this device is no longer ours to work on. */
function isDeviceGone(code: string): code is "fenced" | "not_connecting" | "not_found" {
  return code === "fenced" || code === "not_connecting" || code === "not_found";
}

function describe(error: unknown): string {
  if (error instanceof BackendError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
