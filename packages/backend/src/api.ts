/**
 * The backend-server half of the SQL API (docs/sql-api.md), as a typed interface.
 * The worker talks to the database only through this, so tests can swap in a fake
 * and a real backend can read it as the list of calls it has to make.
 */
import type { SupabaseClient } from "@supabase/supabase-js";

export interface HeartbeatInput {
  serverName: string;
  currentLoad: number;
  maxCapacity: number | null;
  metadata: Record<string, unknown>;
  /**
   * This process, a random id: a heartbeat with a new one tells the database
   * the server restarted, so the linked devices the old process held fail
   * over to this one at once (see `server_heartbeat`).
   */
  instanceId?: string;
}

export interface Heartbeat {
  serverId: string;
  heartbeatTimeoutMs: number;
  connectingGraceMs: number;
  leaseExpiresAt: string;
  /**
   * Milliseconds until the next lease of another live server runs out (null:
   * no other server is live). A claim just after it takes that server's devices
   * if it has died.
   */
  nextLeaseExpiryMs?: number | null;
}

export interface AssignedDevice {
  deviceId: string;
  epoch: number;
  deviceName: string | null;
  /** True when this call took the device over from a dead or missing server. */
  claimed: boolean;
  /**
   * True when the device is linked and its stored session must be resumed, no
   * QR (`claim_devices` row with status `reconnecting`). Absent means false.
   */
  resume?: boolean;
  /**
   * E.164 digits without `+` (what Baileys' `requestPairingCode` takes) when
   * the owner asked to link by phone number and no fresh code is published
   * at this epoch: ask WhatsApp for a code and publish it. Null (or absent)
   * means there is nothing to do, not that a request was cancelled.
   */
  pairingPhone?: string | null;
}

export interface FencedWrite {
  deviceId: string;
  serverId: string;
  epoch: number;
}

/**
 * What a server may report of a device: the database's definition
 * (`device_assignment.statuses('reportable')`), which a test pins this list to.
 * `logged_out` is a report only: the database stores the device as `disconnected`.
 */
export const DEVICE_STATUSES = [
  "connected",
  "connecting",
  "disconnected",
  "error",
  "logged_out",
  "qr_timeout",
] as const;
export type DeviceStatus = typeof DEVICE_STATUSES[number];

/**
 * Why a server failed a device: report `error` with `"<code>: <text>"`. The
 * database's list (`device_assignment.failure_classes()`), which a test pins
 * this one to; docs/contract.md says what each does.
 */
export const FAILURE_CLASSES = [
  "connection_failure",
  "qr_timeout",
  "rate_limited",
  "server_error",
  "version_outdated",
] as const;
export type FailureClass = typeof FAILURE_CLASSES[number];

/**
 * One entry of a device's stored session: `(type, id) → value`. The value is
 * opaque to the database (the backend encrypts it); null deletes the entry.
 */
export interface SessionEntry {
  type: string;
  id: string;
  value: string | null;
}

export interface BackendApi {
  heartbeat(input: HeartbeatInput): Promise<Heartbeat>;
  claimDevices(serverId: string, limit: number): Promise<AssignedDevice[]>;
  publishQr(write: FencedWrite & { qr: string; expiresAt: Date }): Promise<void>;
  /** `publish_device_pairing_code`, fenced; `no_pairing_request` when none is pending. */
  publishPairingCode(write: FencedWrite & { code: string; expiresAt: Date }): Promise<void>;
  reportStatus(write: FencedWrite & { status: DeviceStatus; error?: string }): Promise<void>;
  shutdown(serverId: string): Promise<{ released: number; reassigned: number }>;
  /** Writes one batch of session entries atomically (`device_session_write`), fenced. */
  writeSession(
    write: FencedWrite,
    entries: SessionEntry[],
  ): Promise<{ written: number; deleted: number }>;
  /**
   * `{id: value}` for the entries of `type` among `ids` that exist
   * (`device_session_read`), fenced; `ids` null reads every entry of the type.
   */
  readSession(
    write: FencedWrite,
    type: string,
    ids: string[] | null,
  ): Promise<Record<string, string>>;
}

/**
 * Codes the worker acts on. `fenced`, `not_connecting` and `not_found` (the
 * device was deleted) mean "drop this device now"; `server_not_live` means
 * "our lease is gone" (also what every call of a server an operator disabled
 * gets); `server_disabled` refuses the heartbeat of a disabled server, and
 * `forbidden` a caller that may not act as this server (a backend account
 * signed in under another server's name). `unavailable` is anything we could
 * not get an answer for (network, timeout, 5xx) and is retried.
 */
export type BackendErrorCode =
  | "fenced"
  | "not_found"
  | "not_connecting"
  | "no_pairing_request"
  | "server_not_live"
  | "server_disabled"
  | "forbidden"
  | "invalid_argument"
  | "unavailable"
  | "unexpected";

export class BackendError extends Error {
  constructor(readonly code: BackendErrorCode, message: string, readonly status?: number) {
    super(message);
    this.name = "BackendError";
  }
}

const KNOWN_CODES: BackendErrorCode[] = [
  "fenced",
  "not_found",
  "not_connecting",
  "no_pairing_request",
  "server_not_live",
  "server_disabled",
  "forbidden",
  "invalid_argument",
];

interface PostgrestLikeError {
  message?: string;
  code?: string;
}

export function toBackendError(error: PostgrestLikeError, status?: number): BackendError {
  const message = error.message ?? "unknown error";
  const known = KNOWN_CODES.find((code) => code === message);
  if (known) return new BackendError(known, message, status);
  if (status === undefined || status === 0 || status >= 500) {
    return new BackendError("unavailable", message, status);
  }
  return new BackendError("unexpected", message, status);
}

/**
 * The BackendApi over supabase-js `rpc()` with the project's secret key. Every
 * call carries a timeout: a hung request must never keep a worker waiting past
 * its lease.
 */
export function supabaseBackend(client: SupabaseClient, requestTimeoutMs = 5_000): BackendApi {
  async function call<T>(fn: string, args: Record<string, unknown>): Promise<T> {
    let result;
    try {
      result = await client.rpc(fn, args).abortSignal(AbortSignal.timeout(requestTimeoutMs));
    } catch (error) {
      throw new BackendError("unavailable", error instanceof Error ? error.message : String(error));
    }
    if (result.error) throw toBackendError(result.error, result.status);
    return result.data as T;
  }

  return {
    async heartbeat(input) {
      const data = await call<{
        server_id: string;
        heartbeat_timeout_ms: number;
        connecting_grace_ms: number;
        lease_expires_at: string;
        next_lease_expiry_ms?: number | null;
      }>("server_heartbeat", {
        p_server_name: input.serverName,
        p_current_load: input.currentLoad,
        p_max_capacity: input.maxCapacity,
        p_metadata: input.metadata,
        p_instance_id: input.instanceId ?? null,
      });
      return {
        serverId: data.server_id,
        heartbeatTimeoutMs: Number(data.heartbeat_timeout_ms),
        connectingGraceMs: Number(data.connecting_grace_ms),
        leaseExpiresAt: data.lease_expires_at,
        nextLeaseExpiryMs: data.next_lease_expiry_ms == null
          ? null
          : Number(data.next_lease_expiry_ms),
      };
    },
    async claimDevices(serverId, limit) {
      const rows = await call<
        {
          device_id: string;
          assignment_epoch: number;
          device_name: string | null;
          status: string;
          claimed: boolean;
          pairing_phone: string | null;
          resume?: boolean;
        }[]
      >("claim_devices", { p_server_id: serverId, p_limit: limit });
      return (rows ?? []).map((row) => ({
        deviceId: row.device_id,
        epoch: Number(row.assignment_epoch),
        deviceName: row.device_name,
        claimed: row.claimed,
        // A database migrated before claim_devices returned `resume` says it with the status.
        resume: row.resume ?? row.status === "reconnecting",
        pairingPhone: row.pairing_phone ?? null,
      }));
    },
    async publishQr(write) {
      await call("publish_device_qr", {
        p_device_id: write.deviceId,
        p_server_id: write.serverId,
        p_epoch: write.epoch,
        p_qr: write.qr,
        p_expires_at: write.expiresAt.toISOString(),
      });
    },
    async publishPairingCode(write) {
      await call("publish_device_pairing_code", {
        p_device_id: write.deviceId,
        p_server_id: write.serverId,
        p_epoch: write.epoch,
        p_code: write.code,
        p_expires_at: write.expiresAt.toISOString(),
      });
    },
    async reportStatus(write) {
      await call("report_device_status", {
        p_device_id: write.deviceId,
        p_server_id: write.serverId,
        p_epoch: write.epoch,
        p_status: write.status,
        p_error: write.error ?? null,
      });
    },
    async shutdown(serverId) {
      const data = await call<{ released: number; reassigned: number }>("server_shutdown", {
        p_server_id: serverId,
      });
      return { released: Number(data.released), reassigned: Number(data.reassigned) };
    },
    async writeSession(write, entries) {
      const data = await call<{ written: number; deleted: number }>("device_session_write", {
        p_device_id: write.deviceId,
        p_server_id: write.serverId,
        p_epoch: write.epoch,
        p_entries: entries,
      });
      return { written: Number(data.written), deleted: Number(data.deleted) };
    },
    async readSession(write, type, ids) {
      const data = await call<Record<string, string> | null>("device_session_read", {
        p_device_id: write.deviceId,
        p_server_id: write.serverId,
        p_epoch: write.epoch,
        p_type: type,
        p_ids: ids,
      });
      return data ?? {};
    },
  };
}
