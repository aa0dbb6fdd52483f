/**
 * Fakes for in-process handler tests: a caller whose RPCs are answered by a
 * script, and a clock whose sleeps pass instantly.
 */
import type { Authenticate, Caller } from "../../supabase/functions/_shared/auth.ts";
import type { Clock } from "../../supabase/functions/_shared/clock.ts";
import { ApiError } from "../../supabase/functions/_shared/http.ts";
import type { Rpc, RpcArgs } from "../../supabase/functions/_shared/rpc.ts";

export const DEVICE_ID = "6f9619ff-8b86-4d01-b42d-00c04fc964ff";
export const USER_ID = "0b5a8a3e-4c1f-4f7a-9a43-2a7c1c1e9d11";

export interface RpcCall {
  name: string;
  args: RpcArgs;
  at: number;
}

/** An Rpc that answers from `answer` and records every call. */
export function scriptedRpc(
  answer: (name: string, args: RpcArgs, callIndex: number) => unknown,
  clock?: Clock,
): { rpc: Rpc; calls: RpcCall[] } {
  const calls: RpcCall[] = [];
  const rpc: Rpc = (name, args) => {
    calls.push({ name, args, at: clock?.now() ?? 0 });
    try {
      const result = answer(name, args, calls.length - 1);
      return result instanceof Error ? Promise.reject(result) : Promise.resolve(result);
    } catch (error) {
      return Promise.reject(error);
    }
  };
  return { rpc, calls };
}

export function asUser(rpc: Rpc): Authenticate {
  return () => Promise.resolve({ kind: "user", userId: USER_ID, rpc } satisfies Caller);
}

export function asOperator(rpc: Rpc): Authenticate {
  return () => Promise.resolve({ kind: "operator", rpc } satisfies Caller);
}

export function rejectingAuth(): Authenticate {
  return () =>
    Promise.reject(
      new ApiError("unauthorized", "No credentials found on the request.", {
        details: { reason: "MISSING_CREDENTIALS" },
      }),
    );
}

/** A clock where sleeping advances time at once; `onSleep` lets a test act "during" a wait. */
export class FakeClock implements Clock {
  time = 1_000_000;
  readonly sleeps: number[] = [];
  onSleep: ((elapsedMs: number) => void) | null = null;
  readonly #start = this.time;

  now(): number {
    return this.time;
  }

  random(): number {
    return 0.5;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.resolve();
    this.sleeps.push(ms);
    this.time += ms;
    this.onSleep?.(this.time - this.#start);
    return Promise.resolve();
  }

  get elapsed(): number {
    return this.time - this.#start;
  }
}

/** A `get_device_qr` result as docs/sql-api.md shapes it. */
export function sqlQrState(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    device_id: DEVICE_ID,
    status: "pending",
    device_status: "connecting",
    qr: null,
    server: { id: "11111111-1111-4111-8111-111111111111", name: "railway-1" },
    reason: "waiting_for_server",
    reassigned: false,
    retry_after_ms: 1000,
    epoch: 3,
    last_error_code: null,
    ...overrides,
  };
}

export function readyState(
  value = "2@qr-payload,one",
  updatedAt = "2026-11-28T19:00:00.123456+00:00",
) {
  return sqlQrState({
    status: "ready",
    reason: null,
    qr: { value, updated_at: updatedAt, expires_at: "2026-11-28T19:00:20+00:00" },
  });
}

export function request(
  url: string,
  init: RequestInit & { json?: unknown } = {},
): Request {
  const { json, ...rest } = init;
  const headers = new Headers(rest.headers);
  if (json !== undefined) headers.set("content-type", "application/json");
  return new Request(url, {
    ...rest,
    headers,
    body: json !== undefined ? JSON.stringify(json) : rest.body,
  });
}

export async function errorBody(response: Response): Promise<{
  code: string;
  message: string;
  details: unknown;
}> {
  const body = await response.json();
  return body.error;
}
