/** The fleet simulator's HTTP control: what `make dev`'s page and `curl` drive the fleet with. */
import { controlRefusal } from "./control_auth.ts";
import type { FailureClass } from "@device-qr/backend";
import { type Fleet, FleetError } from "./fleet.ts";

/**
 * The fleet's HTTP control API, for loopback use only (it can kill processes):
 *
 *   GET  /fleet                              workers and their state, and WhatsApp's
 *   POST /fleet/whatsapp       {outage}      break WhatsApp for the fleet: outage is a
 *                                            failure class (version_outdated, ...), null mends it
 *   GET  /fleet/events?after=<seq>           events after a sequence number
 *   POST /fleet/workers        {name?}       add a worker
 *   POST /fleet/workers/<name>/kill|stop|restart|heal
 *   POST /fleet/workers/<name>/partition {self_fencing?}
 *   POST /fleet/scan           {device_id}   simulate the user scanning the QR
 *   POST /fleet/enter-code     {device_id, code}  simulate typing the pairing code on the phone
 *
 * Returns null for paths outside /fleet so a server can mount it beside others.
 *
 * A browser lets any page POST a simple request to loopback, so a command that
 * a browser marks as coming from another site (`Sec-Fetch-Site`, or an
 * `Origin` other than this server's) is refused: a page the developer happens
 * to visit must not kill their workers.
 */
export async function fleetControl(fleet: Fleet, request: Request): Promise<Response | null> {
  const url = new URL(request.url);
  if (url.pathname !== "/fleet" && !url.pathname.startsWith("/fleet/")) return null;
  const parts = url.pathname.split("/").filter(Boolean).map(decodeURIComponent);
  try {
    if (request.method === "GET" && parts.length === 1) {
      return json({ workers: fleet.list(), whatsapp_outage: fleet.whatsappOutage });
    }
    if (request.method === "GET" && parts[1] === "events" && parts.length === 2) {
      const after = Number(url.searchParams.get("after") ?? 0);
      return json({ events: fleet.events.filter((e) => e.seq > after).slice(-1000) });
    }
    if (request.method !== "POST") return json({ error: { code: "method_not_allowed" } }, 405);
    const refusal = controlRefusal(request, url, fleet.controlToken);
    if (refusal) return json({ error: { code: "forbidden", message: refusal } }, 403);
    const body = await readJson(request);
    if (parts[1] === "workers" && parts.length === 2) {
      const name = fleet.add(typeof body.name === "string" ? body.name : undefined);
      return json({ name }, 201);
    }
    if (parts[1] === "workers" && parts.length === 4) {
      const [, , name, verb] = parts;
      switch (verb) {
        case "kill":
          await fleet.kill(name);
          break;
        case "stop":
          await fleet.stop(name);
          break;
        case "restart":
          await fleet.restart(name);
          break;
        case "partition":
          await fleet.partition(name, { selfFencing: body.self_fencing === true });
          break;
        case "heal":
          await fleet.heal(name);
          break;
        default:
          return json({ error: { code: "not_found", message: `unknown verb ${verb}` } }, 404);
      }
      return json({ worker: fleet.info(name) });
    }
    if (parts[1] === "whatsapp" && parts.length === 2) {
      if (!("outage" in body) || (body.outage !== null && typeof body.outage !== "string")) {
        throw new FleetError("invalid_request", "outage is required: a failure class, or null");
      }
      await fleet.setWhatsAppOutage(body.outage as FailureClass | null);
      return json({ whatsapp_outage: fleet.whatsappOutage });
    }
    if (parts[1] === "scan" && parts.length === 2) {
      if (typeof body.device_id !== "string") {
        throw new FleetError("invalid_request", "device_id is required");
      }
      const worker = await fleet.scan(body.device_id);
      return json({ device_id: body.device_id, connected: worker !== null, worker });
    }
    if (parts[1] === "enter-code" && parts.length === 2) {
      if (typeof body.device_id !== "string" || typeof body.code !== "string") {
        throw new FleetError("invalid_request", "device_id and code are required");
      }
      const worker = await fleet.enterCode(body.device_id, body.code);
      return json({ device_id: body.device_id, connected: worker !== null, worker });
    }
    return json({ error: { code: "not_found", message: "unknown fleet route" } }, 404);
  } catch (error) {
    if (error instanceof FleetError) {
      const status =
        { not_found: 404, conflict: 409, timeout: 504, invalid_request: 400 }[error.code];
      return json({ error: { code: error.code, message: error.message } }, status);
    }
    throw error;
  }
}

async function readJson(request: Request): Promise<Record<string, unknown>> {
  const text = await request.text();
  if (!text) return {};
  try {
    const value = JSON.parse(text);
    if (value && typeof value === "object") return value;
  } catch { /* fall through */ }
  throw new FleetError("invalid_request", "body must be a JSON object");
}

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", "cache-control": "no-store" },
  });
}
