/**
 * What a server reports when Baileys closes a device's socket for good: the
 * failure class of its disconnect reason (Baileys' own DisconnectReason and
 * status codes), as report_device_status takes it.
 */
import { DisconnectReason } from "baileys";
import type { DeviceStatus, FailureClass } from "./api.ts";

/** WhatsApp answers 405 "Connection Failure" to a web client version it no longer accepts. */
const VERSION_REFUSED = 405;
/** Baileys' "rate-overlimit". */
const RATE_LIMITED = 429;

/** The failure class of a Baileys status code; null for a logout, which is no failure. */
export function failureClassOf(statusCode: number | undefined): FailureClass | null {
  switch (statusCode) {
    case DisconnectReason.loggedOut:
      return null;
    case VERSION_REFUSED:
      return "version_outdated";
    case RATE_LIMITED:
    case DisconnectReason.forbidden:
      return "rate_limited";
    case DisconnectReason.connectionClosed:
    case DisconnectReason.connectionLost:
    case DisconnectReason.unavailableService:
    case DisconnectReason.restartRequired:
      return "connection_failure";
    default:
      return "server_error";
  }
}

/**
 * The report for a socket Baileys closed with `lastDisconnect.error` (a Boom
 * whose `output.statusCode` is the reason): `logged_out`, or `error` with
 * `"<class>: <message>"`.
 *
 *   const report = baileysFailureReport(update.lastDisconnect?.error);
 *   await device.reportStatus(report.status, report.error);
 */
export function baileysFailureReport(
  error: unknown,
): { status: Extract<DeviceStatus, "error" | "logged_out">; error?: string } {
  const boom = error as { output?: { statusCode?: number }; message?: string } | undefined;
  const code = failureClassOf(boom?.output?.statusCode);
  if (code === null) return { status: "logged_out" };
  return { status: "error", error: `${code}: ${boom?.message ?? "socket closed"}` };
}
