/**
 * BackendClient: what one backend server (a Baileys host on Railway, say) runs
 * so the database can keep every device on a live server, as a library.
 *
 *   heartbeat loop  server_heartbeat        → renews our lease
 *   claim loop      claim_devices           → the devices we must work on now
 *   per device      fenced writes           → carry (server, epoch); `fenced` drops the device
 *   pairing codes   claim's pairing_phone   → handler.requestPairingCode, then the fenced publish
 *   on shutdown     server_shutdown         → our devices go to live servers at once
 *
 * The application supplies a `DeviceHandler`: `start` opens a device's socket
 * (pairing, or resuming its stored session when `device.resume`), `stop` closes
 * it. The client calls them as claims add, move and drop devices, and as the
 * lease runs out, and hands `start` a `HeldDevice` whose writes are fenced.
 *
 * Two rules keep a device from being worked on by two servers at once: a fenced
 * answer (`fenced`, `not_connecting`, `not_found`) stops that device at once,
 * and when heartbeats stop succeeding every device is stopped before our lease
 * can lapse in the database (see lease.ts).
 *
 * The steps (`heartbeat`, `claim`, `enforceLease`) use no timers of their own;
 * `run` drives them with the injected clock, and tests call them one by one.
 */
import {
  type AssignedDevice,
  type BackendApi,
  BackendError,
  type DeviceStatus,
  type FencedWrite,
} from "./api.ts";
import { type Clock, systemClock } from "./clock.ts";
import { Lease } from "./lease.ts";

export interface BackendClientConfig {
  serverName: string;
  /** Devices this server can hold; null means the claim limit. */
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
  /** How often `run` checks the lease. */
  tickMs: number;
  metadata: Record<string, unknown>;
  /**
   * Stop every device when the lease lapses unheard. Only a simulator turns
   * this off, to play a server that wrongly believes it is still live (a long
   * GC pause, a frozen VM) and prove the database fences it anyway.
   */
  selfFencing: boolean;
  /**
   * After the handler failed to get a pairing code, wait this long before
   * asking WhatsApp again for the same number: it flags numbers that ask too
   * often.
   */
  pairingRetryMs: number;
}

/**
 * How long after another server's lease runs out the claim is sent: the
 * database compares its own clock when the claim arrives.
 */
export const CLAIM_AFTER_EXPIRY_MS = 200;

export const DEFAULT_CLIENT_CONFIG: Omit<BackendClientConfig, "serverName"> = {
  maxCapacity: null,
  claimLimit: 100,
  claimBatch: 100,
  pollIntervalMs: 1_000,
  leaseSafetyFraction: 0.8,
  tickMs: 100,
  metadata: {},
  selfFencing: true,
  pairingRetryMs: 30_000,
};

/** Why the client stopped a device. */
export type StopReason =
  | "fenced"
  | "not_found"
  | "not_connecting"
  | "lease_lapsed"
  | "released"
  | "new_epoch"
  | "qr_timeout"
  | "logged_out"
  | "disconnected"
  | "error"
  | "shutdown";

/**
 * Where a held device is: being paired (QRs), being resumed from its stored
 * session, or linked (`connected` reported). `claim_devices` lists the first
 * two; a linked device is ours until our lease lapses or a write is fenced.
 */
export type DevicePhase = "pairing" | "resuming" | "linked";

export type BackendClientEvent =
  | {
    type: "heartbeat";
    serverId: string;
    heartbeatTimeoutMs: number;
    leaseValidUntil: number;
  }
  | { type: "heartbeat_failed"; error: string }
  | {
    type: "session_started";
    deviceId: string;
    epoch: number;
    claimed: boolean;
    resume: boolean;
  }
  | {
    type: "published";
    deviceId: string;
    epoch: number;
    expiresAt: string;
    attemptedAt: number;
  }
  | {
    type: "publish_rejected";
    deviceId: string;
    epoch: number;
    code: string;
    attemptedAt: number;
  }
  | {
    type: "status_reported";
    deviceId: string;
    epoch: number;
    status: DeviceStatus;
  }
  | {
    type: "write_rejected";
    deviceId: string;
    epoch: number;
    step: string;
    code: string;
  }
  | {
    type: "session_dropped";
    deviceId: string;
    epoch: number;
    reason: StopReason;
  }
  /** The handler was asked for a pairing code (the number is never in an event). */
  | { type: "pairing_code_requested"; deviceId: string; epoch: number }
  | { type: "pairing_code_published"; deviceId: string; epoch: number; expiresAt: string }
  /** The database refused the code (`fenced`, `no_pairing_request`, …). */
  | { type: "pairing_code_rejected"; deviceId: string; epoch: number; code: string }
  /** The handler could not get a code; asked again after `pairingRetryMs`. */
  | { type: "pairing_code_failed"; deviceId: string; epoch: number; error: string }
  | { type: "self_fenced"; devices: number; leaseValidUntil: number }
  | { type: "shutdown"; released: number; reassigned: number }
  | { type: "error"; step: string; error: string };

/** The application's half: open and close one device's WhatsApp socket. */
export interface DeviceHandler {
  /**
   * The device is ours at `device.epoch`: pair it (`device.resume` false) or
   * resume its stored session. Return quickly; run the socket in the
   * background and stop when `device.signal` aborts.
   */
  start(device: HeldDevice): void | Promise<void>;
  /** The device is not ours any more: close its socket now, write nothing. */
  stop(device: HeldDevice, reason: StopReason): void | Promise<void>;
  /**
   * Optional: the owner asked to link this pairing device by phone number.
   * Ask WhatsApp for a code (Baileys: `sock.requestPairingCode(phone)`) and
   * return it with the moment it stops being usable; the client publishes it,
   * fenced. `phone` is E.164 digits without `+`; never log it. Called once per
   * pending request at this epoch, and again only when the database no longer
   * finds the published code fresh (it expired, or the owner asked again); a
   * new epoch (the device moved) asks again.
   */
  requestPairingCode?(device: HeldDevice, phone: string): Promise<PairingCode>;
}

export interface PairingCode {
  /** As WhatsApp gives it: 8 characters, no dash (Baileys returns e.g. "ABCD1234"). */
  code: string;
  expiresAt: Date;
}

/** Where one device's pending pairing-code request stands, at one epoch. */
interface PairingCodeState {
  phone: string;
  inFlight: boolean;
  /** A code WhatsApp gave us whose publish got no answer: publish it again, ask nothing. */
  unpublished: PairingCode | null;
  /** Claims numbered up to this one may have been answered before our publish landed. */
  settledAtClaim: number;
  /** No new request to the handler before this time. */
  retryAt: number;
}

/** The database says this device is no longer ours to work on. */
export function isDeviceGone(
  code: string,
): code is "fenced" | "not_connecting" | "not_found" {
  return code === "fenced" || code === "not_connecting" || code === "not_found";
}

/** Statuses after which the server holds nothing for the device. */
const FINAL_STATUSES: Partial<Record<DeviceStatus, StopReason>> = {
  qr_timeout: "qr_timeout",
  logged_out: "logged_out",
  disconnected: "disconnected",
  error: "error",
};

/**
 * One device as this server holds it, at one epoch. Every write goes through
 * `fenced`, which adds our server id and this epoch, and stops the device when
 * the database answers that it is not ours any more.
 */
export class HeldDevice {
  readonly #abort = new AbortController();
  readonly #client: BackendClient;
  #phase: DevicePhase;
  /** @internal The pending pairing-code request, if any (BackendClient owns it). */
  _pairingCode: PairingCodeState | null = null;

  constructor(
    readonly deviceId: string,
    readonly epoch: number,
    readonly deviceName: string | null,
    /** Taken over by this claim (from the pool or a dead server). */
    readonly claimed: boolean,
    /** Linked before: resume its stored session, show no QR. */
    readonly resume: boolean,
    client: BackendClient,
  ) {
    this.#client = client;
    this.#phase = resume ? "resuming" : "pairing";
  }

  get phase(): DevicePhase {
    return this.#phase;
  }

  /** Aborted when the client stops this device: close its socket. */
  get signal(): AbortSignal {
    return this.#abort.signal;
  }

  get held(): boolean {
    return !this.#abort.signal.aborted;
  }

  /**
   * Run one fenced call. Throws `fenced` without calling when the device was
   * already stopped or our lease lapsed; a `fenced`, `not_connecting` or
   * `not_found` answer stops the device before it is rethrown. Other errors
   * (`unavailable`, …) are the caller's to retry.
   */
  fenced<T>(
    step: string,
    call: (write: FencedWrite) => Promise<T>,
  ): Promise<T> {
    return this.#client._fenced(this, step, call);
  }

  /** Publish a QR (fenced); emits `published` or `publish_rejected`. */
  async publishQr(qr: string, expiresAt: Date): Promise<void> {
    const attemptedAt = this.#client.now();
    const event = { deviceId: this.deviceId, epoch: this.epoch, attemptedAt };
    try {
      await this.fenced(
        "publish_qr",
        (write) => this.#client.backend.publishQr({ ...write, qr, expiresAt }),
      );
    } catch (error) {
      this.#client._emit({
        type: "publish_rejected",
        ...event,
        code: errorCode(error),
      });
      throw error;
    }
    this.#client._emit({
      type: "published",
      ...event,
      expiresAt: expiresAt.toISOString(),
    });
  }

  /**
   * Publish a pairing code (fenced); emits `pairing_code_published` or
   * `pairing_code_rejected`. The client calls this itself with what
   * `DeviceHandler.requestPairingCode` returned.
   */
  async publishPairingCode(code: string, expiresAt: Date): Promise<void> {
    const event = { deviceId: this.deviceId, epoch: this.epoch };
    try {
      await this.fenced(
        "publish_pairing_code",
        (write) => this.#client.backend.publishPairingCode({ ...write, code, expiresAt }),
      );
    } catch (error) {
      this.#client._emit({ type: "pairing_code_rejected", ...event, code: errorCode(error) });
      throw error;
    }
    this.#client._emit({
      type: "pairing_code_published",
      ...event,
      expiresAt: expiresAt.toISOString(),
    });
  }

  /**
   * Report a status (fenced). `connected` makes the device linked; a final
   * status (`qr_timeout`, `logged_out`, `disconnected`, `error`) stops it.
   */
  async reportStatus(status: DeviceStatus, error?: string): Promise<void> {
    await this.fenced(
      `report_${status}`,
      (write) => this.#client.backend.reportStatus({ ...write, status, error }),
    );
    this.#client._emit({
      type: "status_reported",
      deviceId: this.deviceId,
      epoch: this.epoch,
      status,
    });
    if (status === "connected" && this.held) this.#phase = "linked";
    const final = FINAL_STATUSES[status];
    if (final) this.#client._stop(this, final);
  }

  /** @internal */
  _abort(): void {
    this.#abort.abort();
  }
}

export interface BackendClientSnapshot {
  serverName: string;
  serverId: string | null;
  leaseValid: boolean;
  leaseValidUntil: number | null;
  lastHeartbeatAt: number | null;
  devices: { deviceId: string; epoch: number; phase: DevicePhase }[];
}

export interface BackendClientOptions {
  backend: BackendApi;
  handler: DeviceHandler;
  config: Partial<BackendClientConfig> & { serverName: string };
  clock?: Clock;
  onEvent?: (event: BackendClientEvent) => void;
}

export class BackendClient {
  readonly config: BackendClientConfig;
  readonly lease: Lease;
  #instanceId: string = crypto.randomUUID();
  readonly backend: BackendApi;
  readonly #handler: DeviceHandler;
  readonly #clock: Clock;
  readonly #onEvent: (event: BackendClientEvent) => void;
  #serverId: string | null = null;
  #devices = new Map<string, HeldDevice>();
  #lastHeartbeatAt: number | null = null;
  #stopped = new AbortController();
  /** Cuts the heartbeat loop's sleep short when the database says we are not live. */
  #heartbeatNow = new AbortController();
  /** Claims started so far: tells an answer sent before a publish landed from a later one. */
  #claims = 0;
  /**
   * Just after another server's lease runs out (the latest heartbeat says
   * when): a claim then takes that server's devices if it has died.
   */
  #claimAt = Number.POSITIVE_INFINITY;
  /** Cuts the claim loop's sleep short when a heartbeat moved `#claimAt`. */
  #claimAtMoved = new AbortController();

  constructor(options: BackendClientOptions) {
    this.backend = options.backend;
    this.#handler = options.handler;
    this.#clock = options.clock ?? systemClock;
    this.#onEvent = options.onEvent ?? (() => {});
    this.config = { ...DEFAULT_CLIENT_CONFIG, ...options.config };
    this.lease = new Lease(this.config.leaseSafetyFraction);
  }

  get serverId(): string | null {
    return this.#serverId;
  }

  get deviceIds(): string[] {
    return [...this.#devices.keys()];
  }

  /** Aborted once `shutdown` starts. */
  get stopped(): AbortSignal {
    return this.#stopped.signal;
  }

  device(deviceId: string): HeldDevice | undefined {
    return this.#devices.get(deviceId);
  }

  now(): number {
    return this.#clock.now();
  }

  snapshot(): BackendClientSnapshot {
    const now = this.#clock.now();
    return {
      serverName: this.config.serverName,
      serverId: this.#serverId,
      leaseValid: this.lease.isValid(now),
      leaseValidUntil: Number.isFinite(this.lease.validUntil) ? this.lease.validUntil : null,
      lastHeartbeatAt: this.#lastHeartbeatAt,
      devices: [...this.#devices.values()].map((d) => ({
        deviceId: d.deviceId,
        epoch: d.epoch,
        phase: d.phase,
      })),
    };
  }

  /**
   * Names this holder of sessions in every heartbeat. A process that let its
   * devices go without the database moving them (self-fenced, or its row
   * replaced) takes a new one, as a restarted process does: the database then
   * fails the linked devices it still assigns to this server over to us, and
   * the next claim resumes them. Otherwise nobody would hold them.
   */
  get instanceId(): string {
    return this.#instanceId;
  }

  /** One heartbeat. Failure leaves the lease to run out on its own. */
  async heartbeat(): Promise<void> {
    const sentAt = this.#clock.now();
    try {
      const beat = await this.backend.heartbeat({
        serverName: this.config.serverName,
        currentLoad: this.#devices.size,
        // We never work on more than claimLimit devices at once; saying so
        // keeps the database from assigning us devices we would leave waiting.
        maxCapacity: this.config.maxCapacity ?? this.config.claimLimit,
        metadata: this.config.metadata,
        instanceId: this.#instanceId,
      });
      if (this.#serverId !== null && beat.serverId !== this.#serverId) {
        // Our row was replaced: nothing we hold under the old id is ours.
        this.#stopAll("released");
      }
      this.#serverId = beat.serverId;
      this.#lastHeartbeatAt = this.#clock.now();
      this.lease.renew(sentAt, beat.heartbeatTimeoutMs);
      // Counted from when the answer arrived, which is after the database
      // measured it: the claim cannot come before the lease runs out.
      this.#claimAt = beat.nextLeaseExpiryMs == null
        ? Number.POSITIVE_INFINITY
        : this.#lastHeartbeatAt + beat.nextLeaseExpiryMs + CLAIM_AFTER_EXPIRY_MS;
      this.#claimAtMoved.abort();
      this._emit({
        type: "heartbeat",
        serverId: beat.serverId,
        heartbeatTimeoutMs: beat.heartbeatTimeoutMs,
        leaseValidUntil: this.lease.validUntil,
      });
    } catch (error) {
      this._emit({ type: "heartbeat_failed", error: describe(error) });
    }
  }

  /**
   * Ask which devices are ours. For devices being paired or resumed the answer
   * is the whole truth: one missing from it was moved or finished, so we stop
   * it. Linked devices are not listed (they are ours until our lease lapses);
   * one listed again with a new epoch was handed back to us to resume.
   */
  async claim(): Promise<void> {
    if (this.#claimAt <= this.#clock.now()) this.#claimAt = Number.POSITIVE_INFINITY;
    const serverId = this.#serverId;
    if (this.#stopped.signal.aborted || serverId === null) return;
    if (!this.lease.isValid(this.#clock.now())) return;
    const claimNumber = ++this.#claims;
    const limit = Math.min(
      this.config.claimLimit,
      this.config.maxCapacity ?? Number.POSITIVE_INFINITY,
      this.#devices.size + this.config.claimBatch,
    );
    let assigned: AssignedDevice[];
    try {
      assigned = await this.backend.claimDevices(serverId, limit);
    } catch (error) {
      if (error instanceof BackendError && error.code === "server_not_live") {
        this.lease.revoke();
        this.enforceLease();
        this.#heartbeatNow.abort();
      } else {
        this._emit({ type: "error", step: "claim", error: describe(error) });
      }
      return;
    }
    // The lease may have lapsed while we waited for the answer.
    if (
      !this.lease.isValid(this.#clock.now()) || this.#stopped.signal.aborted
    ) return;

    // A full page may have left out some of our devices; only a short one is the whole list.
    const complete = assigned.length < limit;
    const current = new Map(
      assigned.map((device) => [device.deviceId, device]),
    );
    for (const held of [...this.#devices.values()]) {
      const device = current.get(held.deviceId);
      if (!device) {
        if (complete && held.phase !== "linked") this._stop(held, "released");
      } else if (device.epoch !== held.epoch) this._stop(held, "new_epoch");
    }
    for (const device of assigned) {
      if (!this.#devices.has(device.deviceId)) this.#start(device);
    }
    for (const device of assigned) {
      const held = this.#devices.get(device.deviceId);
      if (device.pairingPhone && held?.epoch === device.epoch) {
        this.#pairingCodeWanted(held, device.pairingPhone, claimNumber);
      }
    }
  }

  /**
   * How long the claim loop waits for its next claim: until the poll at
   * `pollAt`, or until just after another server's lease runs out if that
   * comes first.
   */
  nextClaimInMs(pollAt: number): number {
    return Math.max(0, Math.min(pollAt, this.#claimAt) - this.#clock.now());
  }

  /** Returns whether we may work; stops every device when we may not. */
  enforceLease(): boolean {
    if (this.#stopped.signal.aborted) return false;
    if (this.lease.isValid(this.#clock.now()) || !this.config.selfFencing) {
      return true;
    }
    if (this.#devices.size > 0) {
      this._emit({
        type: "self_fenced",
        devices: this.#devices.size,
        leaseValidUntil: this.lease.validUntil,
      });
      this.#stopAll("lease_lapsed");
    }
    return false;
  }

  /** Graceful stop: close every socket, then hand our devices over at once. */
  async shutdown(): Promise<void> {
    if (this.#stopped.signal.aborted) return;
    this.#stopped.abort();
    this.#stopAll("shutdown");
    if (this.#serverId === null) return;
    // A few quick retries: a deploy stops many servers at once, and an answer
    // lost now costs the devices a whole heartbeat timeout.
    for (let attempt = 1; attempt <= 3; attempt++) {
      try {
        const result = await this.backend.shutdown(this.#serverId);
        this._emit({ type: "shutdown", ...result });
        return;
      } catch (error) {
        this._emit({ type: "error", step: "shutdown", error: describe(error) });
        if (attempt < 3) await this.#clock.sleep(100 * attempt);
      }
    }
  }

  /** Drive the heartbeat, claim and lease loops until `shutdown`. */
  async run(): Promise<void> {
    const signal = this.#stopped.signal;
    await this.heartbeat();
    const heartbeats = (async () => {
      while (!signal.aborted) {
        const wake = AbortSignal.any([signal, this.#heartbeatNow.signal]);
        await this.#clock.sleep(this.#heartbeatIntervalMs(), wake);
        if (this.#heartbeatNow.signal.aborted) {
          this.#heartbeatNow = new AbortController();
        }
        if (!signal.aborted) await this.heartbeat();
      }
    })();
    const claims = (async () => {
      while (!signal.aborted) {
        await this.claim();
        const pollAt = this.#clock.now() + this.config.pollIntervalMs;
        for (let wait = this.nextClaimInMs(pollAt); wait > 0 && !signal.aborted;) {
          await this.#clock.sleep(wait, AbortSignal.any([signal, this.#claimAtMoved.signal]));
          if (this.#claimAtMoved.signal.aborted) this.#claimAtMoved = new AbortController();
          wait = this.nextClaimInMs(pollAt);
        }
      }
    })();
    const ticks = (async () => {
      while (!signal.aborted) {
        this.enforceLease();
        await this.#clock.sleep(this.config.tickMs, signal);
      }
    })();
    await Promise.all([heartbeats, claims, ticks]);
  }

  /** @internal The fence every HeldDevice write goes through. */
  async _fenced<T>(
    device: HeldDevice,
    step: string,
    call: (write: FencedWrite) => Promise<T>,
  ): Promise<T> {
    if (
      !device.held || this.#devices.get(device.deviceId) !== device ||
      !this.enforceLease()
    ) {
      throw new BackendError(
        "fenced",
        "this server no longer holds the device",
      );
    }
    try {
      return await call({
        deviceId: device.deviceId,
        serverId: this.#serverId!,
        epoch: device.epoch,
      });
    } catch (error) {
      const code = errorCode(error);
      if (isDeviceGone(code)) {
        this._emit({
          type: "write_rejected",
          deviceId: device.deviceId,
          epoch: device.epoch,
          step,
          code,
        });
        this._stop(device, code);
      }
      throw error;
    }
  }

  /** @internal */
  _emit(event: BackendClientEvent): void {
    this.#onEvent(event);
  }

  /** @internal Stop one device: forget it, abort its signal, tell the handler. */
  _stop(device: HeldDevice, reason: StopReason): void {
    if (this.#devices.get(device.deviceId) !== device) return;
    this.#devices.delete(device.deviceId);
    device._abort();
    this._emit({
      type: "session_dropped",
      deviceId: device.deviceId,
      epoch: device.epoch,
      reason,
    });
    this.#callHandler("stop", () => this.#handler.stop(device, reason));
  }

  #start(assigned: AssignedDevice): void {
    const device = new HeldDevice(
      assigned.deviceId,
      assigned.epoch,
      assigned.deviceName,
      assigned.claimed,
      assigned.resume ?? false,
      this,
    );
    this.#devices.set(device.deviceId, device);
    this._emit({
      type: "session_started",
      deviceId: device.deviceId,
      epoch: device.epoch,
      claimed: device.claimed,
      resume: device.resume,
    });
    this.#callHandler("start", () => this.#handler.start(device));
  }

  /**
   * A claim (number `claimNumber`) says `device` needs a pairing code for
   * `phone`. The database stops saying so once a code is published and fresh;
   * what it cannot know is a request still on its way, or an answer it sent
   * before our publish landed, so those are skipped here.
   */
  #pairingCodeWanted(device: HeldDevice, phone: string, claimNumber: number): void {
    let state = device._pairingCode;
    if (state?.phone !== phone) {
      // A first request, or the owner asked again with another number.
      state = { phone, inFlight: false, unpublished: null, settledAtClaim: 0, retryAt: 0 };
      device._pairingCode = state;
    }
    if (state.inFlight || claimNumber <= state.settledAtClaim) return;
    const now = this.#clock.now();
    if (!state.unpublished && now < state.retryAt) return;
    state.inFlight = true;
    this.#supplyPairingCode(device, state)
      .catch((error) => this._emit({ type: "error", step: "pairing_code", error: describe(error) }))
      .finally(() => state.inFlight = false);
  }

  async #supplyPairingCode(device: HeldDevice, state: PairingCodeState): Promise<void> {
    const event = { deviceId: device.deviceId, epoch: device.epoch };
    let code = state.unpublished;
    if (code && code.expiresAt.getTime() <= this.#clock.now()) code = null;
    if (!code) {
      if (!this.#handler.requestPairingCode) {
        state.retryAt = Number.POSITIVE_INFINITY;
        this._emit({
          type: "pairing_code_failed",
          ...event,
          error: "the device handler has no requestPairingCode",
        });
        return;
      }
      this._emit({ type: "pairing_code_requested", ...event });
      try {
        code = await this.#handler.requestPairingCode(device, state.phone);
      } catch (error) {
        state.retryAt = this.#clock.now() + this.config.pairingRetryMs;
        // A handler's message may quote the number; it must not reach a log.
        const message = describe(error).replaceAll(state.phone, "<phone>");
        this._emit({ type: "pairing_code_failed", ...event, error: message });
        return;
      }
      state.unpublished = code;
    }
    // Stopped, or the owner asked with another number meanwhile: this code is for nobody.
    if (!device.held || device._pairingCode !== state) return;
    try {
      await device.publishPairingCode(code.code, code.expiresAt);
    } catch (error) {
      // `unavailable`: the next claim that still shows the number publishes this code again.
      // `fenced` and co. stopped the device in `_fenced`.
      if (errorCode(error) !== "no_pairing_request") return;
    }
    state.unpublished = null;
    state.settledAtClaim = this.#claims;
  }

  #stopAll(reason: StopReason): void {
    for (const device of [...this.#devices.values()]) {
      this._stop(device, reason);
    }
    if (reason !== "shutdown") this.#instanceId = crypto.randomUUID();
  }

  /** A handler that throws must not break the loops; its failure becomes an event. */
  #callHandler(step: string, call: () => void | Promise<void>): void {
    try {
      const result = call();
      if (result) {
        result.catch((error) => this._emit({ type: "error", step, error: describe(error) }));
      }
    } catch (error) {
      this._emit({ type: "error", step, error: describe(error) });
    }
  }

  #heartbeatIntervalMs(): number {
    if (this.config.heartbeatIntervalMs) return this.config.heartbeatIntervalMs;
    const timeout = this.lease.heartbeatTimeoutMs || 30_000;
    return Math.max(250, Math.floor(timeout / 4));
  }
}

function errorCode(error: unknown): string {
  return error instanceof BackendError ? error.code : "unexpected";
}

function describe(error: unknown): string {
  if (error instanceof BackendError) return `${error.code}: ${error.message}`;
  return error instanceof Error ? error.message : String(error);
}
