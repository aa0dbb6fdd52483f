/**
 * What the session store costs a Baileys device (issue 11, "Store cost"): rows
 * written per `creds.update` and per `keys.set` batch, and bytes stored per
 * device (encrypted), with the real `baileys` package driving
 * useDeviceAuthState against the stack (through the gateway, as a backend).
 *
 *   deno run -A bench/session_store.ts [--sessions=N]
 *
 * Needs the local stack (local/db.sh start && local/gateway.sh start) or
 * SUPABASE_URL, SUPABASE_SECRET_KEY and SUPABASE_DB_URL. It pairs one throwaway device
 * the way Baileys does (Baileys' own getNextPreKeys with INITIAL_PREKEY_COUNT,
 * the upload of a device with no pre-key on the server), links it with N
 * 1:1 signal sessions (default 50), prints the figures, and deletes the device.
 */
import { Buffer } from "node:buffer";
import {
  BufferJSON,
  getNextPreKeys,
  INITIAL_PREKEY_COUNT,
  MIN_PREKEY_COUNT,
  proto,
  type SignalDataSet,
} from "baileys";
import { type BackendApi, SessionCipher } from "@device-qr/backend";
import { useDeviceAuthState } from "@device-qr/backend/baileys";
// The package tests' way to the stack (not tests/e2e/harness.ts: type-checked in one graph with
// baileys, jose's WebCrypto types clash with the @types/node that protobufjs pulls in).
import { pairingDevice, testStack } from "../packages/backend/test/stack.ts";

const sessions = Number(
  Deno.args.find((a) => a.startsWith("--sessions="))?.slice("--sessions=".length) ?? 50,
);

/** The backend API, counting what each write sent and what the database wrote. */
function counting(api: BackendApi) {
  const writes: { entries: number; written: number; deleted: number; ms: number }[] = [];
  const counted: BackendApi = {
    ...api,
    async writeSession(write, entries) {
      const started = performance.now();
      const result = await api.writeSession(write, entries);
      writes.push({ entries: entries.length, ...result, ms: performance.now() - started });
      return result;
    },
  };
  return { api: counted, writes, last: () => writes[writes.length - 1] };
}

const bytes = (n: number) => crypto.getRandomValues(new Uint8Array(n));
const stack = testStack();
const db = stack.db;
const { api, last } = counting(stack.api);
const key = btoa(String.fromCharCode(...bytes(32)));
const cipher = await SessionCipher.fromKeyRing(`bench:${key}`);

const { serverId } = await api.heartbeat({
  serverName: `bench-session-store-${crypto.randomUUID()}`,
  currentLoad: 0,
  maxCapacity: null,
  metadata: { bench: "session_store" },
});
const deviceId = await pairingDevice(db, serverId);
const holder = { deviceId, serverId, epoch: 1 };

try {
  const { state, saveCreds } = await useDeviceAuthState(api, holder, { cipher });
  const rows: [string, string][] = [];

  await saveCreds();
  rows.push(["creds.update (saveCreds)", `${last().written} row, ${last().ms.toFixed(1)} ms`]);

  const { update } = await getNextPreKeys(state, INITIAL_PREKEY_COUNT);
  rows.push([
    `keys.set: initial pre-key upload (${INITIAL_PREKEY_COUNT} pre-keys, Baileys' getNextPreKeys)`,
    `${last().written} rows in 1 call, ${last().ms.toFixed(1)} ms`,
  ]);
  Object.assign(state.creds, update, {
    registered: true,
    me: { id: "491701234567:1@s.whatsapp.net", name: "Bench" },
  });
  await saveCreds();

  await getNextPreKeys(state, MIN_PREKEY_COUNT);
  rows.push([
    `keys.set: pre-key top-up (${MIN_PREKEY_COUNT})`,
    `${last().written} rows in 1 call, ${last().ms.toFixed(1)} ms`,
  ]);

  // What a linked device accumulates: its app-state keys and versions, then a
  // signal session (one per contact device) and the identity key it trusts.
  const linked: SignalDataSet = {
    "app-state-sync-key": {
      AAAAAOMf: proto.Message.AppStateSyncKeyData.fromObject({
        keyData: bytes(32),
        fingerprint: { rawId: 1, currentIndex: 1, deviceIndexes: [0, 1] },
        timestamp: Date.now(),
      }),
    },
    "app-state-sync-version": Object.fromEntries(
      ["critical_block", "critical_unblock_low", "regular", "regular_high", "regular_low"].map(
        (name) => [name, { version: 3, hash: Buffer.from(bytes(128)), indexValueMap: {} }],
      ),
    ),
  };
  await state.keys.set(linked);
  rows.push(["keys.set: app-state sync (1 key, 5 versions)", `${last().written} rows in 1 call`]);

  let sessionMs = 0;
  for (let i = 0; i < sessions; i++) {
    const jid = `4917${String(10_000_000 + i)}`;
    await state.keys.set({
      session: { [`${jid}.0`]: bytes(1_100) },
      "identity-key": { [`${jid}.0`]: bytes(33) },
    });
    sessionMs += last().ms;
  }
  rows.push([
    "keys.set: a new 1:1 contact (session + identity key)",
    `${last().written} rows in 1 call, ${(sessionMs / sessions).toFixed(1)} ms mean`,
  ]);

  const [size] = await db<{ rows: number; value_bytes: number; row_bytes: number }[]>`
    select count(*)::int as rows,
           sum(octet_length(value))::int as value_bytes,
           sum(pg_column_size(s.*))::int as row_bytes
    from device_assignment.device_sessions s where s.device_id = ${deviceId}`;
  const plainCreds = JSON.stringify(state.creds, BufferJSON.replacer).length;
  const [credsRow] = await db<{ n: number }[]>`
    select octet_length(value)::int as n from device_assignment.device_sessions
    where device_id = ${deviceId} and type = 'creds'`;
  rows.push(["creds entry: plaintext JSON → stored", `${plainCreds} → ${credsRow.n} bytes`]);
  rows.push([
    `one device (creds, ${INITIAL_PREKEY_COUNT + MIN_PREKEY_COUNT} pre-keys, ${sessions} contacts)`,
    `${size.rows} rows, ${(size.value_bytes / 1024).toFixed(0)} KiB of values, ` +
    `${(size.row_bytes / 1024).toFixed(0)} KiB of rows (pg_column_size, before index and TOAST)`,
  ]);

  const perType = await db<{ type: string; rows: number; mean: number }[]>`
    select type, count(*)::int as rows, round(avg(octet_length(value)))::int as mean
    from device_assignment.device_sessions where device_id = ${deviceId}
    group by type order by type`;
  for (const { type, rows: n, mean } of perType) {
    rows.push([`  ${type}`, `${n} rows, ${mean} bytes stored per value`]);
  }

  const width = Math.max(...rows.map(([label]) => label.length));
  console.log(`Session store cost (Baileys ${INITIAL_PREKEY_COUNT} initial pre-keys, AES-256-GCM)`);
  for (const [label, value] of rows) console.log(`  ${label.padEnd(width)}  ${value}`);
} finally {
  // Deleting the user deletes the device and, with it, its session.
  await db`delete from auth.users where id = (select user_id from public.devices where id = ${deviceId})`;
  await db`update public.backend_servers set is_active = false where id = ${serverId}`;
  await db.end({ timeout: 5 });
}
