/**
 * get-device-qr: the QR state of the caller's device, as JSON or as an image.
 * The SQL function `get_device_qr` decides everything (fresh or not, stale or
 * orphaned, reassign now or not); this handler validates, authorizes, makes
 * that one call, and renders the answer. With `wait`, it repeats the call
 * until the answer changes; each repeat names the poll (`p_wait_id`), so the
 * SQL bounds how many polls one user runs at once. A POST with `pairing_phone`
 * first asks for a pairing code (`request_pairing_code`), then answers the same way.
 */
import { z } from "zod";
import type { Authenticate } from "../_shared/auth.ts";
import { type Clock, systemClock } from "../_shared/clock.ts";
import {
  ApiError,
  Cors,
  errorToResponse,
  logLine,
  methodNotAllowed,
  readJsonBody,
  rejectDeclaredOversize,
  Responder,
  retryAfterSeconds,
} from "../_shared/http.ts";
import type { QrImages } from "../_shared/qr.ts";
import type { Rpc } from "../_shared/rpc.ts";
import { validate } from "../_shared/validate.ts";
import { pollUntilChanged } from "./long-poll.ts";
import { PairingPhone } from "./phone.ts";

export const MAX_WAIT_SECONDS = 25;
const METHODS = ["GET", "POST"] as const;

/** A query string carries text; JSON may carry numbers. Both mean the same `wait`. */
const waitSeconds = z.preprocess(
  (v) => (typeof v === "string" && v.trim() !== "" ? Number(v) : v),
  z.number({ error: "wait must be a number of seconds" }).min(0).max(MAX_WAIT_SECONDS),
);

export const QrRequest = z.object({
  device_id: z.guid({ error: "device_id must be a UUID" }),
  format: z.enum(["json", "png", "svg"], { error: "format must be json, png or svg" }).default(
    "json",
  ),
  wait: waitSeconds.default(0),
  since: z.iso.datetime({ offset: true, error: "since must be an ISO 8601 time" }).nullish(),
  /** Asks for a pairing code for this number (POST body only), then answers as usual. */
  pairing_phone: PairingPhone.optional(),
});
export type QrRequest = z.infer<typeof QrRequest>;

/** The answer's `status` (docs/sql-api.md): what the frontend shows. */
export const QrStatus = z.enum([
  "ready",
  "pending",
  "reconnecting",
  "connected",
  "not_connecting",
  "qr_timeout",
  "error",
]);
export type QrStatus = z.infer<typeof QrStatus>;

/** What `get_device_qr` returns (docs/sql-api.md); fields the response does not use are not listed. */
const SqlQrState = z.object({
  device_id: z.string(),
  status: QrStatus,
  qr: z.object({
    value: z.string(),
    updated_at: z.string().nullish(),
    expires_at: z.string().nullish(),
  }).nullish(),
  server: z.object({ id: z.string(), name: z.string().nullish() }).nullish(),
  reason: z.string().nullish(),
  reassigned: z.boolean().nullish(),
  retry_after_ms: z.number().nullish(),
  last_error_code: z.string().nullish(),
  pairing_code: z.object({ code: z.string(), expires_at: z.string() }).nullish(),
  incident: z.object({ code: z.string(), since: z.string() }).nullish(),
});
type SqlQrState = z.infer<typeof SqlQrState>;

export interface GetDeviceQrDeps {
  authenticate: Authenticate;
  images: QrImages;
  allowedOrigins?: string;
  clock?: Clock;
}

/**
 * Statuses that can change by themselves while a client waits; the others need
 * an action first. A `reconnecting` wait ends when the session is resumed
 * (`connected`) or given up (`pending` for a QR, or `not_connecting`).
 */
const WAITABLE: ReadonlySet<QrStatus> = new Set(["pending", "ready", "reconnecting"]);

/** Retry-After for a 202 when the SQL gave no hint. */
const DEFAULT_RETRY_MS = 2000;

export function createGetDeviceQrHandler(
  deps: GetDeviceQrDeps,
): (req: Request) => Promise<Response> {
  const cors = new Cors(deps.allowedOrigins, METHODS);
  const clock = deps.clock ?? systemClock;
  const log = logLine("get-device-qr");

  return async (request) => {
    const responder = new Responder(cors, request);
    if (request.method === "OPTIONS") return responder.preflight();
    try {
      if (!(METHODS as readonly string[]).includes(request.method)) {
        throw methodNotAllowed(request.method, METHODS);
      }
      rejectDeclaredOversize(request);
      const caller = await deps.authenticate(request);
      const input = validate(QrRequest, await rawInput(request));
      if (input.pairing_phone) {
        await caller.rpc("request_pairing_code", {
          p_device_id: input.device_id,
          p_phone: input.pairing_phone,
        }, request.signal);
      }

      // The first check answers at once more often than not and holds nothing;
      // only the re-checks of a poll that waits hold its lease, ended below.
      const waitId = crypto.randomUUID();
      let holdsLease = false;
      const first = await readState(caller.rpc, input.device_id, request.signal);
      try {
        // A request for a code waits for the code; any other call for what the client lacks.
        const { state } = await pollUntilChanged({
          check: () => {
            holdsLease = true;
            return readState(caller.rpc, input.device_id, request.signal, waitId);
          },
          first,
          answerNow: input.pairing_phone
            ? (s) => !WAITABLE.has(s.status) || s.pairing_code != null
            : (s) => !WAITABLE.has(s.status) || isNewToClient(s, input.since),
          key: input.pairing_phone ? pairingKey : stateKey,
          waitMs: input.wait * 1000,
          clock,
          signal: request.signal,
        });
        return await render(responder, deps.images, state, input.format);
      } finally {
        if (holdsLease) await endLongPoll(caller.rpc, waitId, log);
      }
    } catch (error) {
      return errorToResponse(responder, error, log);
    }
  };
}

async function readState(
  rpc: Rpc,
  deviceId: string,
  signal: AbortSignal,
  waitId?: string,
): Promise<SqlQrState> {
  const args = waitId ? { p_device_id: deviceId, p_wait_id: waitId } : { p_device_id: deviceId };
  const data = await rpc("get_device_qr", args, signal);
  const parsed = SqlQrState.safeParse(data);
  if (!parsed.success) {
    console.log(
      JSON.stringify({ level: "error", event: "unexpected_sql_shape", rpc: "get_device_qr" }),
    );
    throw new ApiError("internal_error", "The database answered in an unexpected shape.");
  }
  return parsed.data;
}

/**
 * Frees the poll's slot now rather than when its lease lapses, so a client
 * that polls again at once does not count twice. Best effort, even for a
 * client that went away: a lease that stays lapses within seconds.
 */
async function endLongPoll(
  rpc: Rpc,
  waitId: string,
  log: (line: Record<string, unknown>) => void,
): Promise<void> {
  try {
    await rpc("end_long_poll", { p_wait_id: waitId });
  } catch (error) {
    log({ level: "warn", event: "end_long_poll_failed", code: (error as ApiError).code ?? null });
  }
}

/** A fresh QR the client does not hold yet (its `since` names another, or none). */
function isNewToClient(state: SqlQrState, since: string | null | undefined): boolean {
  if (!state.qr) return false;
  if (!since) return true;
  return instant(state.qr.updated_at) !== instant(since);
}

/** A new QR, a new status or a new pairing code ends a wait. */
function stateKey(state: SqlQrState): string {
  return JSON.stringify([
    state.status,
    state.qr?.value ?? null,
    instant(state.qr?.updated_at),
    state.pairing_code?.code ?? null,
  ]);
}

/** While waiting for a pairing code, QR rotations do not end the wait. */
function pairingKey(state: SqlQrState): string {
  return JSON.stringify([WAITABLE.has(state.status), state.pairing_code?.code ?? null]);
}

/** Compares times as instants: `+00:00` and `Z`, or extra digits, name the same moment. */
function instant(time: string | null | undefined): number | null {
  if (!time) return null;
  const ms = Date.parse(time);
  return Number.isNaN(ms) ? null : ms;
}

async function render(
  responder: Responder,
  images: QrImages,
  state: SqlQrState,
  format: QrRequest["format"],
): Promise<Response> {
  const fresh = state.status === "ready" && state.qr ? state.qr : null;
  if (format === "png" && fresh) {
    return responder.respond(await images.png(fresh.value) as Uint8Array<ArrayBuffer>, 200, {
      "Content-Type": "image/png",
    });
  }
  if (format === "svg" && fresh) {
    return responder.respond(await images.svg(fresh.value), 200, {
      "Content-Type": "image/svg+xml; charset=utf-8",
    });
  }
  const body = await qrBody(images, state);
  if (format === "json") return responder.json(body);
  // An image was asked for but there is none to give yet: say why, and when to ask again.
  return responder.json(body, 202, {
    "Retry-After": String(retryAfterSeconds(state.retry_after_ms ?? DEFAULT_RETRY_MS)),
  });
}

/** The contract's JSON body. */
async function qrBody(images: QrImages, state: SqlQrState) {
  return {
    device_id: state.device_id,
    status: state.status,
    qr: state.qr
      ? {
        value: state.qr.value,
        image: await images.dataUrl(state.qr.value),
        updated_at: state.qr.updated_at ?? null,
        expires_at: state.qr.expires_at ?? null,
      }
      : null,
    server: state.server ? { id: state.server.id, name: state.server.name ?? null } : null,
    reason: state.reason ?? null,
    reassigned: state.reassigned ?? false,
    retry_after_ms: state.retry_after_ms ?? null,
    last_error_code: state.last_error_code ?? null,
    pairing_code: state.pairing_code ?? null,
    incident: state.incident ?? null,
  };
}

/**
 * GET reads the query string; POST reads the JSON body, over any query parameters.
 * A phone number never travels in a URL, which proxies and gateways log.
 */
async function rawInput(request: Request): Promise<Record<string, unknown>> {
  const query: Record<string, unknown> = Object.fromEntries(new URL(request.url).searchParams);
  if ("pairing_phone" in query) {
    throw new ApiError(
      "invalid_request",
      "pairing_phone: send it in a POST body, never in the URL",
    );
  }
  if (request.method === "GET") return query;
  return { ...query, ...(await readJsonBody(request)) };
}
