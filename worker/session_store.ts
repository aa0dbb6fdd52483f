/**
 * The fenced session store (device_session_write / device_session_read, see
 * docs/sql-api.md) as the simulator uses it. A stop-gap adapter: the package's
 * BackendApi gains `writeSession` / `readSession` in a parallel change, and
 * then this file goes. Values are opaque to the database; the simulator stores
 * plain JSON, the package encrypts.
 */
import type { SupabaseClient } from "@supabase/supabase-js";
import { type FencedWrite, toBackendError } from "../packages/backend/src/api.ts";
import { BackendError } from "../packages/backend/src/api.ts";

/** One entry of a batch; `value` null deletes it. */
export interface SessionEntry {
  type: string;
  id: string;
  value: string | null;
}

export interface SessionStore {
  write(write: FencedWrite, entries: SessionEntry[]): Promise<void>;
  /** `{id: value}` for the entries that exist; `ids` null reads the whole type. */
  read(
    write: FencedWrite,
    type: string,
    ids: string[] | null,
  ): Promise<Record<string, string>>;
}

export function supabaseSessionStore(
  client: SupabaseClient,
  requestTimeoutMs = 5_000,
): SessionStore {
  async function call<T>(
    fn: string,
    args: Record<string, unknown>,
  ): Promise<T> {
    let result;
    try {
      result = await client.rpc(fn, args).abortSignal(
        AbortSignal.timeout(requestTimeoutMs),
      );
    } catch (error) {
      throw new BackendError(
        "unavailable",
        error instanceof Error ? error.message : String(error),
      );
    }
    if (result.error) throw toBackendError(result.error, result.status);
    return result.data as T;
  }
  const fenced = (write: FencedWrite) => ({
    p_device_id: write.deviceId,
    p_server_id: write.serverId,
    p_epoch: write.epoch,
  });
  return {
    async write(write, entries) {
      await call("device_session_write", {
        ...fenced(write),
        p_entries: entries,
      });
    },
    async read(write, type, ids) {
      const data = await call<Record<string, string> | null>(
        "device_session_read",
        {
          ...fenced(write),
          p_type: type,
          p_ids: ids,
        },
      );
      return data ?? {};
    },
  };
}
