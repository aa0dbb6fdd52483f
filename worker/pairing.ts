/**
 * Simulated WhatsApp for the fleet: what a linked device sees while it pairs,
 * and a DeviceHandler for BackendClient that plays the Baileys socket.
 *
 * Pairing: the first QR is valid for 60 s, then WhatsApp hands out a fresh
 * reference every 20 s, six in all, after which the attempt ends (Baileys
 * closes it with "QR refs attempts ended"). The numbers are configurable so
 * tests can run the schedule fast.
 *
 * Linked sessions: a simulated scan stores the device's `creds` in the fenced
 * session store before reporting `connected`, as Baileys' `saveCreds` does on
 * `creds.update` before `connection: "open"`; a device handed over for resume
 * reads them back and reconnects without a QR, or reports `logged_out` when
 * there are none.
 *
 * Failures: `setOutage(code)` makes WhatsApp refuse every pairing attempt with
 * that failure class, as when it stops accepting a client version: each one
 * reports `error` with `"<code>: <text>"` at its next step, and every new one
 * after it, until `setOutage(null)`. Linked sessions and resumes are left
 * alone. `fail(deviceId, code)` fails one pairing attempt the same way: a
 * failure on one server alone.
 *
 * Pairing codes: asked for a code for a phone number, the socket answers with
 * 8 characters of Baileys' alphabet after a round trip; the code is usable
 * until `pairingCodeTtlMs` or the end of the socket's pairing attempt,
 * whichever is first (WhatsApp announces no lifetime: Baileys' code lives on
 * the socket that asked, which WhatsApp closes when its QR references run
 * out). Entering that code on the phone (simulated) links the device exactly
 * like a scan.
 */
import {
  type BackendApi,
  BackendError,
  type Clock,
  type DeviceHandler,
  type FailureClass,
  type HeldDevice,
  isDeviceGone,
  type PairingCode,
  type StopReason,
  systemClock,
} from "@device-qr/backend";

/** The fenced session store calls the simulated WhatsApp needs. */
export type SessionStore = Pick<BackendApi, "writeSession" | "readSession">;

export interface PairingSchedule {
  firstQrTtlMs: number;
  rotationMs: number;
  maxQrs: number;
  /** Time from taking a device to its first QR (opening the socket, the handshake). */
  qrGenerationMs: number;
}

export const WHATSAPP_PAIRING: PairingSchedule = {
  firstQrTtlMs: 60_000,
  rotationMs: 20_000,
  maxQrs: 6,
  qrGenerationMs: 500,
};

/** How long QR number `index` (0-based) stays valid. */
export function qrTtlMs(schedule: PairingSchedule, index: number): number {
  return index === 0 ? schedule.firstQrTtlMs : schedule.rotationMs;
}

/**
 * When each QR of one pairing attempt is shown, relative to the moment the
 * device was taken, and when the attempt times out.
 */
export function pairingTimeline(schedule: PairingSchedule): {
  qrs: { index: number; shownAtMs: number; expiresAtMs: number }[];
  timeoutAtMs: number;
} {
  const qrs = [];
  let at = schedule.qrGenerationMs;
  for (let index = 0; index < schedule.maxQrs; index++) {
    const expiresAt = at + qrTtlMs(schedule, index);
    qrs.push({ index, shownAtMs: at, expiresAtMs: expiresAt });
    at = expiresAt;
  }
  return { qrs, timeoutAtMs: at };
}

function base64(bytes: Uint8Array): string {
  return btoa(String.fromCharCode(...bytes));
}

function randomBytes(length: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(length));
}

/**
 * The long-lived keys of one linked device. A real client keeps them across QR
 * rotations; only the server reference changes.
 */
export interface PairingKeys {
  noisePublicKey: string;
  identityPublicKey: string;
  advSecret: string;
}

export function newPairingKeys(): PairingKeys {
  return {
    noisePublicKey: base64(randomBytes(32)),
    identityPublicKey: base64(randomBytes(32)),
    advSecret: base64(randomBytes(32)),
  };
}

/**
 * A QR payload shaped like WhatsApp's: `<ref>,<noise key>,<identity key>,<adv secret>`
 * where the reference WhatsApp sends starts with `2@`.
 */
export function whatsappQrPayload(keys: PairingKeys): string {
  const ref = `2@${base64(randomBytes(66))}`;
  return [ref, keys.noisePublicKey, keys.identityPublicKey, keys.advSecret]
    .join(",");
}

/**
 * The characters of a WhatsApp pairing code: Baileys' `bytesToCrockford`
 * alphabet (baileys src/Utils/generics.ts), no 0, O, I or U.
 */
export const PAIRING_CODE_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTVWXYZ";

/** 8 characters from 40 random bits, 5 bits each, as Baileys makes them. */
export function whatsappPairingCode(): string {
  const bits = [...randomBytes(5)].map((byte) => byte.toString(2).padStart(8, "0")).join("");
  return Array.from(
    { length: 8 },
    (_, i) => PAIRING_CODE_ALPHABET[parseInt(bits.slice(i * 5, i * 5 + 5), 2)],
  ).join("");
}

export { formatPairingCode } from "./pairing_code_format.ts";

export interface SimulatorConfig {
  pairing: PairingSchedule;
  /** Time a resumed session takes to reconnect (the Noise handshake with WhatsApp). */
  resumeMs: number;
  /** Retry delay for a write that got no answer. */
  retryMs: number;
  /** How often `run` publishes due QRs and finishes due resumes. */
  tickMs: number;
  /** Round trip of a pairing-code request to WhatsApp. */
  pairingCodeMs: number;
  /** Longest a pairing code is usable (the pairing attempt's end may come first). */
  pairingCodeTtlMs: number;
}

export const DEFAULT_SIMULATOR_CONFIG: SimulatorConfig = {
  pairing: WHATSAPP_PAIRING,
  resumeMs: 300,
  retryMs: 1_000,
  tickMs: 100,
  pairingCodeMs: 300,
  pairingCodeTtlMs: 120_000,
};

/** The text a simulated failure report carries after its code. */
export const FAILURE_TEXT = "WhatsApp closed the connection (simulated)";

/** The session store key of a device's credentials (Baileys' `creds`). */
export const CREDS = { type: "creds", id: "creds" } as const;

/** One simulated socket: a pairing attempt, a resume, or a linked session. */
interface SimulatedSocket {
  device: HeldDevice;
  keys: PairingKeys;
  qrsShown: number;
  nextActionAt: number;
  busy: boolean;
  /** Whether the device currently shows one of our QRs (a scan can succeed). */
  hasQr: boolean;
  /** When WhatsApp ends this pairing attempt (its last QR expires). */
  attemptEndsAt: number;
  pairingCode: PairingCode | null;
}

export type SimulatorEvent = { type: "error"; step: string; error: string };

export class SimulatedWhatsApp implements DeviceHandler {
  readonly config: SimulatorConfig;
  #sockets = new Map<string, SimulatedSocket>();
  #outage: FailureClass | null = null;

  constructor(
    private readonly store: SessionStore,
    config: Partial<SimulatorConfig> = {},
    private readonly clock: Clock = systemClock,
    private readonly onEvent: (event: SimulatorEvent) => void = () => {},
  ) {
    this.config = { ...DEFAULT_SIMULATOR_CONFIG, ...config };
  }

  start(device: HeldDevice): void {
    const delay = device.resume ? this.config.resumeMs : this.config.pairing.qrGenerationMs;
    this.#sockets.set(device.deviceId, {
      device,
      keys: newPairingKeys(),
      qrsShown: 0,
      nextActionAt: this.clock.now() + delay,
      busy: false,
      hasQr: false,
      attemptEndsAt: this.clock.now() + pairingTimeline(this.config.pairing).timeoutAtMs,
      pairingCode: null,
    });
  }

  stop(device: HeldDevice, _reason: StopReason): void {
    if (this.#sockets.get(device.deviceId)?.device === device) {
      this.#sockets.delete(device.deviceId);
    }
  }

  /** The failure class WhatsApp answers every pairing attempt with, or null. */
  get outage(): FailureClass | null {
    return this.#outage;
  }

  /**
   * WhatsApp fails every pairing attempt with `code` from now on (null: it
   * works again). Open attempts fail at the next tick, as sockets WhatsApp
   * closed would.
   */
  setOutage(code: FailureClass | null): void {
    this.#outage = code;
    if (!code) return;
    for (const socket of this.#sockets.values()) {
      if (socket.device.phase === "pairing") socket.nextActionAt = this.clock.now();
    }
  }

  /**
   * This server's pairing attempt for the device fails with `code` (a
   * failure on one server alone). False when it pairs no such device or the
   * report did not go through.
   */
  async fail(deviceId: string, code: FailureClass): Promise<boolean> {
    const socket = this.#sockets.get(deviceId);
    // A QR being published finishes first, as a socket's events come one at a time.
    for (let tick = 0; socket?.busy && tick < 20; tick++) {
      await this.clock.sleep(this.config.tickMs);
    }
    if (!socket || socket.busy || socket.device.phase !== "pairing") return false;
    if (this.#sockets.get(deviceId) !== socket) return false;
    socket.busy = true;
    try {
      await this.#reportFailure(socket, code);
      return true;
    } catch (error) {
      this.#failed("fail", error);
      return false;
    } finally {
      socket.busy = false;
    }
  }

  /** The socket's attempt ends as WhatsApp ended it: `error`, `"<code>: <text>"`. */
  #reportFailure(socket: SimulatedSocket, code: FailureClass): Promise<void> {
    return socket.device.reportStatus("error", `${code}: ${FAILURE_TEXT}`);
  }

  /** Publish every QR that is due, time out spent attempts, finish due resumes. */
  async work(): Promise<void> {
    const now = this.clock.now();
    const due = [...this.#sockets.values()].filter((s) =>
      !s.busy && s.device.phase !== "linked" && s.nextActionAt <= now
    );
    await Promise.all(due.map((socket) => this.#advance(socket)));
  }

  /**
   * The user scanned this device's QR (simulated): its credentials are stored,
   * then it reports `connected`. False when we show no QR for it or a write
   * did not go through.
   */
  async scan(deviceId: string): Promise<boolean> {
    const socket = this.#sockets.get(deviceId);
    if (!socket?.hasQr) return false;
    return await this.#link(socket, "scan");
  }

  /**
   * The owner asked to link by phone number: a fresh code from "WhatsApp",
   * which replaces any earlier one of this socket (as Baileys' does).
   */
  async requestPairingCode(device: HeldDevice, _phone: string): Promise<PairingCode> {
    await this.clock.sleep(this.config.pairingCodeMs, device.signal);
    const socket = this.#sockets.get(device.deviceId);
    if (socket?.device !== device || device.phase !== "pairing") {
      throw new Error("no pairing socket for this device");
    }
    const expiresAt = Math.min(
      this.clock.now() + this.config.pairingCodeTtlMs,
      socket.attemptEndsAt,
    );
    socket.pairingCode = { code: whatsappPairingCode(), expiresAt: new Date(expiresAt) };
    return socket.pairingCode;
  }

  /**
   * The user typed `code` on their phone (simulated): when it is this
   * socket's unexpired code, the device links exactly as after a scan.
   */
  async enterCode(deviceId: string, code: string): Promise<boolean> {
    const socket = this.#sockets.get(deviceId);
    const issued = socket?.pairingCode;
    if (!socket || !issued || issued.expiresAt.getTime() <= this.clock.now()) return false;
    if (code.toUpperCase().replace(/[\s-]/g, "") !== issued.code) return false;
    return await this.#link(socket, "enter_code");
  }

  /** Store the creds, then report `connected`: what Baileys does once the phone approved. */
  async #link(socket: SimulatedSocket, step: string): Promise<boolean> {
    const deviceId = socket.device.deviceId;
    if (socket.busy || socket.device.phase !== "pairing") return false;
    socket.busy = true;
    try {
      const creds = JSON.stringify({
        ...socket.keys,
        me: { id: `${deviceId}@s.whatsapp.net` },
      });
      await socket.device.fenced(
        "session_write",
        (write) => this.store.writeSession(write, [{ ...CREDS, value: creds }]),
      );
      await socket.device.reportStatus("connected");
      socket.pairingCode = null;
      return true;
    } catch (error) {
      this.#failed(step, error);
      return false;
    } finally {
      socket.busy = false;
    }
  }

  /** Drive `work` until `signal` aborts. */
  async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      // Not awaited: a hung write must not delay the next QR.
      this.work().catch((error) => this.#failed("work", error));
      await this.clock.sleep(this.config.tickMs, signal);
    }
  }

  async #advance(socket: SimulatedSocket): Promise<void> {
    socket.busy = true;
    try {
      if (socket.device.phase === "resuming") await this.#resume(socket);
      else if (this.#outage) await this.#reportFailure(socket, this.#outage);
      else if (socket.qrsShown < this.config.pairing.maxQrs) {
        await this.#publishNext(socket);
      } else await socket.device.reportStatus("qr_timeout");
    } catch (error) {
      this.#failed(socket.device.phase, error);
      // Not ours any more: the client stopped it. Anything else is retried.
      socket.nextActionAt = this.clock.now() + this.config.retryMs;
    } finally {
      socket.busy = false;
    }
  }

  /** Reconnect from the stored creds, no QR; without any, WhatsApp would refuse: `logged_out`. */
  async #resume(socket: SimulatedSocket): Promise<void> {
    const { device } = socket;
    const stored = await device.fenced(
      "session_read",
      (write) => this.store.readSession(write, CREDS.type, [CREDS.id]),
    );
    if (stored[CREDS.id] === undefined) {
      await device.reportStatus("logged_out", "no stored session to resume");
      return;
    }
    await device.reportStatus("connected");
  }

  async #publishNext(socket: SimulatedSocket): Promise<void> {
    const ttl = qrTtlMs(this.config.pairing, socket.qrsShown);
    const expiresAt = new Date(this.clock.now() + ttl);
    await socket.device.publishQr(whatsappQrPayload(socket.keys), expiresAt);
    socket.qrsShown += 1;
    socket.hasQr = true;
    socket.nextActionAt = expiresAt.getTime();
  }

  #failed(step: string, error: unknown): void {
    // A device the database took away is the client's business (it emitted why).
    if (error instanceof BackendError && isDeviceGone(error.code)) return;
    this.onEvent({
      type: "error",
      step,
      error: error instanceof Error ? error.message : String(error),
    });
  }
}
