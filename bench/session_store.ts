/**
 * What the session store costs a Baileys device (issue 11, "Store cost"): rows
 * written per `creds.update` and per `keys.set` batch, and bytes stored per
 * device (encrypted), with the real `baileys` package driving
 * useDeviceAuthState through a gateway, as a backend does.
 *
 *   deno run -A bench/session_store.ts [--sessions=N]     (bench/run.ts --only=store)
 *
 * Needs the local database (local/db.sh start); like the other sections it
 * works in a database of its own (bench_store) behind a private gateway, both
 * gone at the end. It pairs one device the way Baileys does (Baileys' own
 * getNextPreKeys with INITIAL_PREKEY_COUNT, the upload of a device with no
 * pre-key on the server), then links it with N 1:1 signal sessions (default 50).
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
import { createClient } from "@supabase/supabase-js";
import { type BackendApi, SessionCipher, supabaseBackend } from "@device-qr/backend";
import { useDeviceAuthState } from "@device-qr/backend/baileys";
// Not tests/e2e/harness.ts: type-checked in one graph with baileys, jose's
// WebCrypto types clash with the @types/node that protobufjs pulls in.
import { pairingDevice } from "../packages/backend/test/stack.ts";
import { SECRET_KEY } from "../local/gateway/keys.ts";
import { startBenchGateway } from "./lib/gateway.ts";
import { benchDatabaseName, connect, createBenchDatabase, dropBenchDatabase } from "./lib/pg.ts";

export interface SessionStoreOptions {
  /** 1:1 contacts the linked device gets a signal session with. */
  sessions: number;
  log: (line: string) => void;
}

/** One Baileys write: how many entries it handed the store, in how many calls, and what was written. */
export interface StoreWrite {
  event: string;
  entries: number;
  calls: number;
  rowsWritten: number;
  /** Mean wall time of one call through the gateway. */
  ms: number;
}

export interface SessionStoreReport {
  sessions: number;
  initialPreKeys: number;
  writes: StoreWrite[];
  credsPlainBytes: number;
  credsStoredBytes: number;
  device: { rows: number; valueBytes: number; rowBytes: number };
  perType: { type: string; rows: number; meanBytes: number }[];
  notes: string[];
}

/** The backend API, counting the calls and rows of each write. */
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
  /** Runs `step` and sums up the writes it made. */
  const measure = async (event: string, step: () => unknown): Promise<StoreWrite> => {
    const before = writes.length;
    await step();
    const made = writes.slice(before);
    return {
      event,
      entries: made.reduce((sum, w) => sum + w.entries, 0),
      calls: made.length,
      rowsWritten: made.reduce((sum, w) => sum + w.written + w.deleted, 0),
      ms: made.reduce((sum, w) => sum + w.ms, 0) / Math.max(1, made.length),
    };
  };
  return { api: counted, measure };
}

const bytes = (n: number) => crypto.getRandomValues(new Uint8Array(n));

export async function runSessionStore(options: SessionStoreOptions): Promise<SessionStoreReport> {
  const name = benchDatabaseName("bench_store");
  const url = await createBenchDatabase(name);
  const db = connect(url, 2);
  const gateway = await startBenchGateway(url);
  try {
    const backend = supabaseBackend(
      createClient(gateway.url, SECRET_KEY, {
        auth: { persistSession: false, autoRefreshToken: false },
      }),
    );
    const { api, measure } = counting(backend);
    const cipher = await SessionCipher.fromKeyRing(
      `bench:${btoa(String.fromCharCode(...bytes(32)))}`,
    );
    const { serverId } = await api.heartbeat({
      serverName: "bench-session-store",
      currentLoad: 0,
      maxCapacity: null,
      metadata: { bench: "session_store" },
    });
    const deviceId = await pairingDevice(db, serverId);
    options.log(`session store: pairing one device, then ${options.sessions} contacts`);

    const { state, saveCreds } = await useDeviceAuthState(api, { deviceId, serverId, epoch: 1 }, {
      cipher,
    });
    const writes: StoreWrite[] = [];
    writes.push(await measure("creds.update (saveCreds)", saveCreds));
    let update: Partial<typeof state.creds> = {};
    writes.push(
      await measure(
        `keys.set: initial pre-key upload (${INITIAL_PREKEY_COUNT} pre-keys, Baileys' getNextPreKeys)`,
        async () => ({ update } = await getNextPreKeys(state, INITIAL_PREKEY_COUNT)),
      ),
    );
    Object.assign(state.creds, update, {
      registered: true,
      me: { id: "491701234567:1@s.whatsapp.net", name: "Bench" },
    });
    await saveCreds();
    writes.push(
      await measure(
        `keys.set: pre-key top-up (${MIN_PREKEY_COUNT})`,
        () => getNextPreKeys(state, MIN_PREKEY_COUNT),
      ),
    );

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
    writes.push(
      await measure("keys.set: app-state sync (1 key, 5 versions)", () => state.keys.set(linked)),
    );
    const contacts: StoreWrite[] = [];
    for (let i = 0; i < options.sessions; i++) {
      const jid = `4917${String(10_000_000 + i)}`;
      contacts.push(
        await measure("contact", () =>
          state.keys.set({
            session: { [`${jid}.0`]: bytes(1_100) },
            "identity-key": { [`${jid}.0`]: bytes(33) },
          })),
      );
    }
    if (contacts.length > 0) {
      writes.push({
        event: "keys.set: a new 1:1 contact (session + identity key)",
        entries: contacts[0].entries,
        calls: contacts.reduce((sum, c) => sum + c.calls, 0) / contacts.length,
        rowsWritten: contacts.reduce((sum, c) => sum + c.rowsWritten, 0) / contacts.length,
        ms: contacts.reduce((sum, c) => sum + c.ms, 0) / contacts.length,
      });
    }

    const [size] = await db<{ rows: number; value_bytes: number; row_bytes: number }[]>`
      select count(*)::int as rows,
             sum(octet_length(value))::int as value_bytes,
             sum(pg_column_size(s.*))::int as row_bytes
      from device_assignment.device_sessions s where s.device_id = ${deviceId}`;
    const [credsRow] = await db<{ n: number }[]>`
      select octet_length(value)::int as n from device_assignment.device_sessions
      where device_id = ${deviceId} and type = 'creds'`;
    const perType = await db<{ type: string; rows: number; mean: number }[]>`
      select type, count(*)::int as rows, round(avg(octet_length(value)))::int as mean
      from device_assignment.device_sessions where device_id = ${deviceId}
      group by type order by type`;
    return {
      sessions: options.sessions,
      initialPreKeys: INITIAL_PREKEY_COUNT + MIN_PREKEY_COUNT,
      writes,
      credsPlainBytes: JSON.stringify(state.creds, BufferJSON.replacer).length,
      credsStoredBytes: credsRow.n,
      device: { rows: size.rows, valueBytes: size.value_bytes, rowBytes: size.row_bytes },
      perType: perType.map((t) => ({ type: t.type, rows: t.rows, meanBytes: t.mean })),
      notes: [
        `One device paired with Baileys ${INITIAL_PREKEY_COUNT} initial pre-keys and a top-up of ${MIN_PREKEY_COUNT}, then linked with ${options.sessions} 1:1 contacts (a 1,100-byte signal session and a 33-byte identity key each). Values are AES-256-GCM sealed BufferJSON; bytes per row are pg_column_size, before index and TOAST. Each call goes through a private gateway as the secret key, the way a backend's supabase-js does.`,
      ],
    };
  } finally {
    await gateway.stop();
    await db.end({ timeout: 5 });
    await dropBenchDatabase(name);
  }
}

/** The figures as label → value lines, for the command line. */
export function storeLines(r: SessionStoreReport): [string, string][] {
  const lines: [string, string][] = r.writes.map((w) => [
    w.event,
    `${w.entries} entries → ${w.rowsWritten} rows in ${w.calls} call${w.calls === 1 ? "" : "s"}, ${
      w.ms.toFixed(1)
    } ms`,
  ]);
  lines.push([
    "creds entry: plaintext JSON → stored",
    `${r.credsPlainBytes} → ${r.credsStoredBytes} bytes`,
  ]);
  lines.push([
    `one device (creds, ${r.initialPreKeys} pre-keys, ${r.sessions} contacts)`,
    `${r.device.rows} rows, ${(r.device.valueBytes / 1024).toFixed(0)} KiB of values, ` +
    `${(r.device.rowBytes / 1024).toFixed(0)} KiB of rows`,
  ]);
  for (const t of r.perType) {
    lines.push([`  ${t.type}`, `${t.rows} rows, ${t.meanBytes} bytes per value`]);
  }
  return lines;
}

/** Wrong behaviour, for the smoke run: a `keys.set` that took more than one call, or rows lost. */
export function storeProblems(r: SessionStoreReport): string[] {
  return r.writes.flatMap((w) => [
    ...(w.calls !== 1 ? [`session store: ${w.event} took ${w.calls} calls, not 1`] : []),
    ...(w.rowsWritten !== w.entries
      ? [`session store: ${w.event} wrote ${w.rowsWritten} rows for ${w.entries} entries`]
      : []),
  ]);
}

if (import.meta.main) {
  const sessions = Number(
    Deno.args.find((a) => a.startsWith("--sessions="))?.slice("--sessions=".length) ?? 50,
  );
  const report = await runSessionStore({ sessions, log: (line) => console.error(line) });
  const lines = storeLines(report);
  const width = Math.max(...lines.map(([label]) => label.length));
  console.log(`Session store cost (Baileys, AES-256-GCM)`);
  for (const [label, value] of lines) console.log(`  ${label.padEnd(width)}  ${value}`);
}
