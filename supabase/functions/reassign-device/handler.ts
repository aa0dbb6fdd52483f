/**
 * reassign-device: start or restart pairing on a live server.
 *
 * - A user reassigns one of their own devices (`request_device_reassignment`).
 * - An operator (the project's secret key) reassigns one device, every
 *   orphaned device, or every connecting device, optionally as a dry run
 *   (`reassign_devices`), or reads the fleet's health (`assignment_health`,
 *   scope `health`, which the operator CLI's `status` uses).
 *
 * Each request makes exactly one RPC; the SQL decides and writes atomically.
 */
import { z } from "zod";
import type { Authenticate, Caller } from "../_shared/auth.ts";
import {
  ApiError,
  Cors,
  errorToResponse,
  logLine,
  methodNotAllowed,
  readJsonBody,
  rejectDeclaredOversize,
  Responder,
} from "../_shared/http.ts";
import { validate } from "../_shared/validate.ts";

const METHODS = ["POST"] as const;

const deviceId = z.guid({ error: "device_id must be a UUID" });

export const UserReassignRequest = z.object({ device_id: deviceId });

export const OPERATOR_SCOPES = ["device", "inactive", "all_connecting", "health"] as const;

export const OperatorRequest = z.preprocess(
  // `{device_id}` alone from an operator means that one device.
  (body) => {
    const b = body as Record<string, unknown>;
    return b.scope === undefined && b.device_id !== undefined ? { ...b, scope: "device" } : b;
  },
  z.object({
    scope: z.enum(OPERATOR_SCOPES, {
      error: `scope must be one of ${OPERATOR_SCOPES.join(", ")}`,
    }),
    device_id: deviceId.nullish(),
    dry_run: z.boolean({ error: "dry_run must be true or false" }).default(false),
  }).superRefine((req, ctx) => {
    if (req.scope === "device" && !req.device_id) {
      ctx.addIssue({
        code: "custom",
        path: ["device_id"],
        message: "scope device needs a device_id",
      });
    }
    if (req.scope !== "device" && req.device_id) {
      ctx.addIssue({
        code: "custom",
        path: ["device_id"],
        message: `device_id is only accepted with scope device, not ${req.scope}`,
      });
    }
  }),
);

/** Fields only an operator may send; a user sending them is refused, not silently ignored. */
const OPERATOR_FIELDS = ["scope", "dry_run"];

export interface ReassignDeviceDeps {
  authenticate: Authenticate;
  allowedOrigins?: string;
}

export function createReassignDeviceHandler(
  deps: ReassignDeviceDeps,
): (req: Request) => Promise<Response> {
  const cors = new Cors(deps.allowedOrigins, METHODS);
  const log = logLine("reassign-device");

  return async (request) => {
    const responder = new Responder(cors, request);
    if (request.method === "OPTIONS") return responder.preflight();
    try {
      if (request.method !== "POST") throw methodNotAllowed(request.method, METHODS);
      rejectDeclaredOversize(request);
      const caller = await deps.authenticate(request);
      const body = await readJsonBody(request);
      const result = caller.kind === "user"
        ? await reassignOwnDevice(caller, body, request.signal)
        : await operate(caller, body, request.signal, log);
      return responder.json(result);
    } catch (error) {
      return errorToResponse(responder, error, log);
    }
  };
}

async function reassignOwnDevice(
  caller: Caller,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<unknown> {
  const operatorOnly = OPERATOR_FIELDS.filter((field) => body[field] !== undefined);
  if (operatorOnly.length > 0) {
    throw new ApiError(
      "forbidden",
      "Operator scopes need the project's secret key; a user token may only reassign its own device.",
      { details: { fields: operatorOnly, hint: 'Send only {"device_id": "..."}.' } },
    );
  }
  const input = validate(UserReassignRequest, body);
  return await caller.rpc("request_device_reassignment", { p_device_id: input.device_id }, signal);
}

async function operate(
  caller: Caller,
  body: Record<string, unknown>,
  signal: AbortSignal,
  log: (line: Record<string, unknown>) => void,
): Promise<unknown> {
  const input = validate(OperatorRequest, body);
  if (input.scope === "health") return await caller.rpc("assignment_health", {}, signal);
  const result = await caller.rpc("reassign_devices", {
    p_scope: input.scope,
    p_device_id: input.device_id ?? null,
    p_dry_run: input.dry_run,
  }, signal);
  const count = (result as { count?: unknown } | null)?.count;
  log({
    level: "info",
    event: "operator_reassign",
    scope: input.scope,
    dry_run: input.dry_run,
    count,
  });
  return result;
}
