/**
 * Message traffic of linked simulated devices: a linked Baileys socket writes
 * signal keys (`keys.set` of a `session` record) whenever it sends or receives
 * a message, for as long as it runs. The simulator's linked devices otherwise
 * write nothing after their scan, so a server that lost a device without
 * knowing (a partition that does not fence itself) would never try a late
 * session write for the database to refuse.
 *
 * Off unless WORKER_SESSION_TRAFFIC_MS is set (the chaos run sets it).
 */
import type { BackendClient, SessionEntry } from "@device-qr/backend";
import type { SessionStore } from "./pairing.ts";

/** Every `intervalMs`, one fenced `keys.set` per linked device, until `signal` aborts. */
export async function runSessionTraffic(
  client: BackendClient,
  store: SessionStore,
  intervalMs: number,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
    for (const { deviceId, phase } of client.snapshot().devices) {
      const device = client.device(deviceId);
      if (phase !== "linked" || !device) continue;
      // An opaque value, as the encrypted record of the contact's signal session is.
      const entry: SessionEntry = {
        type: "session",
        id: "chaos-contact.0",
        value: btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(96)))),
      };
      // A fenced answer stops the device (the client's business); other failures are retried next time.
      device.fenced("session_write", (write) => store.writeSession(write, [entry])).catch(() => {});
    }
  }
}
