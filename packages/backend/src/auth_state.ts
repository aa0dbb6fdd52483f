/**
 * A Baileys auth state kept in the fenced session store instead of a folder,
 * so the session outlives the server: when this server dies, the next holder
 * of the device loads it and resumes without a QR, and this server's late
 * writes are refused (`BackendError("fenced")`: drop the socket).
 *
 * Modelled on Baileys' own useMultiFileAuthState
 * (WhiskeySockets/Baileys src/Utils/use-multi-file-auth-state.ts): the same
 * BufferJSON serialization, initAuthCreds() for a device never linked, and
 * app-state-sync-key values revived as protobuf objects. Each value is
 * encrypted (crypto.ts) before it leaves the process.
 */
import {
  type AuthenticationCreds,
  type AuthenticationState,
  BufferJSON,
  initAuthCreds,
  proto,
  type SignalDataSet,
  type SignalDataTypeMap,
} from "baileys";
import type { BackendApi, FencedWrite, SessionEntry } from "./api.ts";
import { SessionCipher } from "./crypto.ts";
export { baileysFailureReport, failureClassOf } from "./baileys_failures.ts";

/** The entry Baileys' creds live in (type and id both `creds`, as the SQL API names it). */
export const CREDS_ENTRY = { type: "creds", id: "creds" } as const;

export interface DeviceAuthState {
  state: AuthenticationState;
  /** Pass to `sock.ev.on("creds.update", saveCreds)`. */
  saveCreds(): Promise<void>;
}

export interface DeviceAuthStateOptions {
  /** Defaults to `SessionCipher.fromEnv()` (DEVICE_SESSION_KEYS): the store never holds plaintext. */
  cipher?: SessionCipher;
}

/**
 * The device's auth state, for the server holding it at `device.epoch` (the
 * `AssignedDevice` a claim returned). Loads the stored creds, or fresh ones
 * for a device that has none yet (it will pair with a QR).
 */
export async function useDeviceAuthState(
  api: BackendApi,
  device: FencedWrite,
  options: DeviceAuthStateOptions = {},
): Promise<DeviceAuthState> {
  const cipher = options.cipher ?? (await SessionCipher.fromEnv());
  const holder: FencedWrite = {
    deviceId: device.deviceId,
    serverId: device.serverId,
    epoch: device.epoch,
  };

  // Writes go out one at a time in call order, so a later write of an entry
  // can never land before an earlier one; a read waits for the writes issued
  // before it (read-your-writes) but reads run side by side. A write takes its
  // place when called, before its values are sealed: encryption is
  // asynchronous and would otherwise reorder concurrent writes.
  let writes: Promise<unknown> = Promise.resolve();
  function write(sealing: Promise<SessionEntry[]>): Promise<void> {
    // Its failure is reported by `run`; without this, Node would call it unhandled while queued.
    sealing.catch(() => {});
    const run = writes.then(async () => {
      await api.writeSession(holder, await sealing);
    });
    writes = run.catch(() => {});
    return run;
  }

  async function seal(
    type: string,
    id: string,
    value: unknown,
  ): Promise<SessionEntry> {
    if (value === null || value === undefined) return { type, id, value: null };
    const json = JSON.stringify(value, BufferJSON.replacer);
    return {
      type,
      id,
      value: await cipher.encrypt(
        { deviceId: holder.deviceId, type, id },
        json,
      ),
    };
  }

  async function read(
    type: string,
    ids: string[],
  ): Promise<Map<string, unknown>> {
    await writes;
    const stored = await api.readSession(holder, type, ids);
    // In the order asked for (the database's jsonb object has an order of its own).
    const found = ids.filter((id) => Object.hasOwn(stored, id));
    const opened = await Promise.all(
      found.map((id) => cipher.decrypt({ deviceId: holder.deviceId, type, id }, stored[id])),
    );
    return new Map(
      found.map((id, i) => [id, JSON.parse(opened[i], BufferJSON.reviver)]),
    );
  }

  const storedCreds = (await read(CREDS_ENTRY.type, [CREDS_ENTRY.id])).get(
    CREDS_ENTRY.id,
  ) as
    | AuthenticationCreds
    | undefined;
  const creds = storedCreds ?? initAuthCreds();

  return {
    state: {
      creds,
      keys: {
        async get<T extends keyof SignalDataTypeMap>(type: T, ids: string[]) {
          const data: { [id: string]: SignalDataTypeMap[T] } = {};
          if (ids.length === 0) return data;
          for (const [id, value] of await read(type, ids)) {
            // Baileys reads these as protobuf objects (use-multi-file-auth-state.ts does the same).
            data[id] = (type === "app-state-sync-key"
              ? proto.Message.AppStateSyncKeyData.fromObject(value as object)
              : value) as SignalDataTypeMap[T];
          }
          return data;
        },
        // One call is one batch: Baileys' transaction commits all it changed at once.
        async set(data: SignalDataSet) {
          const pending: Promise<SessionEntry>[] = [];
          for (const [type, values] of Object.entries(data)) {
            for (const [id, value] of Object.entries(values ?? {})) {
              pending.push(seal(type, id, value));
            }
          }
          if (pending.length === 0) return;
          await write(Promise.all(pending));
        },
      },
    },
    async saveCreds() {
      await write(
        seal(CREDS_ENTRY.type, CREDS_ENTRY.id, creds).then((entry) => [entry]),
      );
    },
  };
}
