/**
 * The README's example, word for word (readme_test.ts compares them), so the
 * package's tsc build type-checks it against the real API and `baileys`. Built,
 * never run: it would dial WhatsApp.
 */

import { createClient } from "@supabase/supabase-js";
import makeWASocket, { DisconnectReason } from "baileys";
import {
  BackendClient,
  type DeviceHandler,
  type HeldDevice,
  supabaseBackend,
} from "@device-qr/backend";
import { useDeviceAuthState } from "@device-qr/backend/baileys";

// This server's own account: the lines `operator server add <name>` printed.
const supabase = createClient(process.env.SUPABASE_URL!, process.env.SUPABASE_PUBLISHABLE_KEY!);
const { error } = await supabase.auth.signInWithPassword({
  email: process.env.BACKEND_EMAIL!,
  password: process.env.BACKEND_PASSWORD!,
});
if (error) throw error;
const backend = supabaseBackend(supabase);

/** What Baileys closes a socket with (a @hapi/boom error). */
type Closed = { output?: { statusCode?: number } } | undefined;

async function connect(device: HeldDevice): Promise<void> {
  const holder = { deviceId: device.deviceId, serverId: client.serverId!, epoch: device.epoch };
  const { state, saveCreds } = await useDeviceAuthState(backend, holder); // DEVICE_SESSION_KEYS
  const sock = makeWASocket({ auth: state }); // device.resume: stored creds, no QR
  device.signal.addEventListener("abort", () => sock.end(undefined)); // moved to another server
  // A fenced write stops the device (its signal aborts): the new holder has the session.
  sock.ev.on("creds.update", () => device.fenced("creds", saveCreds).catch(() => {}));
  sock.ev.on("connection.update", ({ qr, connection, lastDisconnect }) => {
    if (qr) device.publishQr(qr, new Date(Date.now() + 20_000)).catch(() => {});
    if (connection === "open") device.reportStatus("connected").catch(() => {});
    if (connection !== "close" || !device.held) return;
    const code = (lastDisconnect?.error as Closed)?.output?.statusCode;
    if (code === DisconnectReason.loggedOut) {
      device.reportStatus("logged_out").catch(() => {});
    } else connect(device).catch(() => {}); // restartRequired after a scan, a lost line
  });
}

const handler: DeviceHandler = { start: connect, stop: () => {} }; // stop: device.signal aborts
const client = new BackendClient({
  backend,
  handler,
  config: { serverName: process.env.BACKEND_SERVER_NAME!, maxCapacity: 500 },
});
process.on("SIGTERM", () => client.shutdown().then(() => process.exit(0)));
await client.run();
