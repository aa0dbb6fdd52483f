/// <reference lib="dom" />
/**
 * The demo page. Device cards talk to the edge functions as the signed-in demo
 * user, exactly as a product frontend would (supabase-js `functions.invoke`);
 * the fleet panel and the kill/partition/scan buttons go to the dev-only demo
 * server, since no real user may do those things.
 *
 * `.mts`, not `.ts`: it is type-checked against the DOM on its own
 * (tests/demo/page_check_test.ts), so the DOM lib never mixes into a
 * repository-wide `deno check` of the Deno code under local/.
 */
import { createClient } from "@supabase/supabase-js";
import { CONTROL_TOKEN_HEADER } from "../../worker/control_auth.ts";
import { formatPairingCode } from "../../worker/pairing_code_format.ts";

interface DemoConfig {
  supabaseUrl: string;
  publishableKey: string;
  devices: { id: string; name: string }[];
  /** The fleet's per-run token, required on every control request (worker/control_auth.ts). */
  fleetControlToken: string;
}

interface QrState {
  device_id: string;
  status:
    | "ready"
    | "pending"
    | "reconnecting"
    | "connected"
    | "not_connecting"
    | "qr_timeout"
    | "error";
  qr: { value: string; image: string; updated_at: string; expires_at: string } | null;
  server: { id: string; name: string } | null;
  reason: string | null;
  reassigned: boolean;
  retry_after_ms: number | null;
  pairing_code: { code: string; expires_at: string } | null;
  /** The fleet incident that holds the device (reason `fleet_incident`). */
  incident: { code: string; since: string } | null;
}

interface FleetWorker {
  name: string;
  state: string;
  devices: string[];
}

interface HealthIncident {
  code: string;
  since: string;
  servers: string[];
  devices_held: number;
}

interface HealthServer {
  name: string;
  live: boolean;
  heartbeat_age_ms: number | null;
  connecting_devices: number;
}

interface DeviceView {
  id: string;
  name: string;
  state: QrState | null;
  since: string | null;
  /** When the request that brought `state` was sent. */
  stateAskedAt: number;
  poll: AbortController | null;
  card: HTMLElement;
}

/**
 * Devices whose server was killed, waiting for a server to take them again: a
 * QR when the device was being paired, `connected` again (its session resumed,
 * no QR) when it was linked. `armedAt` is when the kill was done; only a fleet
 * snapshot taken after it can show who holds the device now.
 */
const awaitingRecovery = new Map<
  string,
  {
    from: string;
    killedAt: number;
    linked: boolean;
    armedAt: number | null;
    /** The QR the card showed when the server was killed (pairing only): a new one is the sign. */
    qrAtKill: string | null;
    /** When the fleet was first seen to hold the device again under the killed name. */
    heldSeenAt?: number;
  }
>();

/** Devices a fleet incident held, until they show a QR again by themselves. */
const heldByIncident = new Set<string>();

/** The open incidents' codes as last seen, to say when one ends. */
let incidentsSeen = new Set<string>();

/** The fleet as last seen: each worker's state and devices, when it was asked and answered. */
let fleetSeen: { at: number; answeredAt: number; workers: Map<string, FleetWorker> } = {
  at: 0,
  answeredAt: 0,
  workers: new Map(),
};

const config: DemoConfig = await (await fetch("/config.json")).json();

let session: { access_token: string; expires_at: number } | null = null;
async function accessToken(): Promise<string> {
  if (!session || session.expires_at - Date.now() < 60_000) {
    session = await (await fetch("/api/token")).json();
  }
  return session!.access_token;
}

const supabase = createClient(config.supabaseUrl, config.publishableKey, { accessToken });

const devices = config.devices.map((device) => {
  const view: DeviceView = {
    ...device,
    state: null,
    since: null,
    stateAskedAt: 0,
    poll: null,
    card: deviceCard(device),
  };
  document.querySelector("#devices")!.append(view.card);
  return view;
});

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> & { dataset?: Record<string, string> } = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  const { dataset, ...rest } = props;
  Object.assign(node, rest);
  if (dataset) Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
}

function deviceCard(device: { id: string; name: string }): HTMLElement {
  const card = element("article", { className: "device", dataset: { deviceId: device.id } });
  card.append(
    element("h3", {}, device.name, " ", element("span", { className: "badge status" }, "…")),
    element("p", { className: "meta server" }),
    element("div", { className: "qr" }, "loading…"),
    element("p", { className: "meta expiry" }),
    element(
      "div",
      { className: "pairing-code", hidden: true },
      element("p", { className: "hint" }, "On the phone: Linked devices → Link with phone number"),
      element("p", { className: "code" }),
      element("p", { className: "meta code-expiry" }),
      element("button", {
        type: "button",
        className: "enter-code",
        onclick: () => enterCode(device.id),
      }, "Enter code on phone"),
    ),
    element("p", { className: "meta note" }),
    element(
      "div",
      {},
      element("button", {
        type: "button",
        className: "connect",
        onclick: () => reassign(device.id),
      }, "Connect"),
      " ",
      element(
        "button",
        { type: "button", className: "scan", onclick: () => scan(device.id) },
        "Simulate scan",
      ),
    ),
    phoneForm(device.id),
  );
  return card;
}

/**
 * "Link with phone number instead": the number goes to get-device-qr, which
 * validates it; it stays in this input and is shown nowhere else.
 */
function phoneForm(deviceId: string): HTMLElement {
  const input = element("input", {
    type: "tel",
    name: "phone",
    placeholder: "+1 415 555 0123",
    autocomplete: "tel",
    required: true,
  });
  input.setAttribute("aria-label", "Phone number in international format");
  const form = element(
    "form",
    {
      onsubmit: (event: Event) => {
        event.preventDefault();
        requestCode(deviceId, input.value);
      },
    },
    input,
    " ",
    element("button", { type: "submit", className: "get-code" }, "Get code"),
  );
  return element(
    "details",
    { className: "by-phone" },
    element("summary", {}, "Link with phone number instead"),
    form,
    element("p", { className: "meta phone-status", role: "status" }),
  );
}

function render(view: DeviceView): void {
  const state = view.state;
  if (!state) return;
  const card = view.card;
  const status = card.querySelector(".status")!;
  status.textContent = state.status.replace("_", " ");
  status.className = `badge status ${state.status}`;
  card.dataset.status = state.status;
  card.dataset.reason = state.reason ?? "";
  card.dataset.server = state.server?.name ?? "";
  card.querySelector(".server")!.textContent = state.server
    ? `on ${state.server.name}`
    : "no server";
  const qr = card.querySelector(".qr")!;
  if (state.qr) {
    const img = qr.querySelector("img") ?? element("img", { alt: `QR code for ${view.name}` });
    if (img.src !== state.qr.image) img.src = state.qr.image;
    img.dataset.server = state.server?.name ?? "";
    img.dataset.updatedAt = state.qr.updated_at;
    if (!img.isConnected) qr.replaceChildren(img);
  } else {
    qr.replaceChildren(placeholder(state));
  }
  const connect = card.querySelector<HTMLButtonElement>(".connect")!;
  connect.textContent = state.status === "not_connecting" || state.status === "qr_timeout" ||
      state.status === "error"
    ? "Connect"
    : "Reassign";
  connect.disabled = state.status === "connected" || state.status === "reconnecting";
  card.querySelector<HTMLButtonElement>(".scan")!.disabled = state.status !== "ready";
  const linked = state.status === "connected" || state.status === "reconnecting";
  card.querySelector<HTMLButtonElement>(".get-code")!.disabled = linked;
  if (linked) phoneStatus(view, "");
  const code = state.pairing_code;
  const codeBox = card.querySelector<HTMLElement>(".pairing-code")!;
  codeBox.hidden = !code;
  card.dataset.pairingCode = code ? "shown" : "";
  if (code) codeBox.querySelector(".code")!.textContent = formatPairingCode(code.code);
  // The code can arrive through the card's own long-poll before the request's
  // answer: then "asking…" is done, while an error stays until the next try.
  const progress = card.querySelector<HTMLElement>(".phone-status")!;
  if (code && !progress.classList.contains("problem")) phoneStatus(view, "");
  updateExpiry(view);
}

function placeholder(state: QrState): string {
  switch (state.status) {
    case "connected":
      return "connected: pairing done";
    case "reconnecting":
      return "reconnecting: resuming the linked session on a live server, no QR needed";
    case "not_connecting":
      return "idle — press Connect";
    case "qr_timeout":
      return "QR timed out — press Connect";
    case "error":
      return "pairing failed — press Connect";
    default:
      if (state.reason === "fleet_incident") {
        return `WhatsApp fails on every server (${state.incident?.code}): held, nothing spent; ` +
          "pairing resumes by itself when it ends";
      }
      return state.reason ? `waiting (${state.reason.replaceAll("_", " ")})` : "waiting for a QR…";
  }
}

function updateExpiry(view: DeviceView): void {
  const qr = view.state?.qr;
  const text = qr
    ? `QR expires in ${Math.max(0, Math.round((Date.parse(qr.expires_at) - Date.now()) / 1000))} s`
    : "";
  view.card.querySelector(".expiry")!.textContent = text;
  const code = view.state?.pairing_code;
  const left = code
    ? Math.max(0, Math.round((Date.parse(code.expires_at) - Date.now()) / 1000))
    : 0;
  view.card.querySelector(".code-expiry")!.textContent = code
    ? `code expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`
    : "";
}

function phoneStatus(view: DeviceView, text: string, kind: "" | "problem" = ""): void {
  const node = view.card.querySelector<HTMLElement>(".phone-status")!;
  node.textContent = text;
  node.className = `meta phone-status ${kind}`;
}

/** Ask for a pairing code; the answer comes as soon as the device's server published one. */
async function requestCode(deviceId: string, phone: string): Promise<void> {
  const view = devices.find((d) => d.id === deviceId)!;
  const button = view.card.querySelector<HTMLButtonElement>(".get-code")!;
  button.disabled = true;
  phoneStatus(view, "asking the device's server for a code…");
  try {
    const asked = Date.now();
    const { data, error } = await supabase.functions.invoke<QrState>("get-device-qr", {
      body: { device_id: deviceId, pairing_phone: phone, wait: 20 },
    });
    if (error || !data) {
      phoneStatus(view, await describeError(error), "problem");
      return;
    }
    phoneStatus(view, data.pairing_code ? "" : "code requested; it appears here when ready");
    log(`${view.name}: pairing code requested`);
    observe(view, data, asked);
    refresh(deviceId);
  } finally {
    button.disabled = view.state?.status === "connected";
  }
}

function note(view: DeviceView, text: string, kind: "" | "recovered" | "problem" = ""): void {
  const node = view.card.querySelector<HTMLElement>(".note")!;
  node.textContent = text;
  node.className = `meta note ${kind}`;
}

function log(text: string): void {
  const list = document.querySelector("#log")!;
  list.prepend(element("li", {}, `${new Date().toLocaleTimeString()} ${text}`));
  while (list.children.length > 60) list.lastElementChild!.remove();
}

/** Statuses that change by themselves, so a poll waits on them (get-device-qr's own list). */
const WAITABLE: readonly string[] = ["pending", "ready", "reconnecting"];

/** Long-poll one device forever: each answer comes when its QR or status changes. */
async function follow(view: DeviceView): Promise<void> {
  while (true) {
    const controller = new AbortController();
    view.poll = controller;
    const started = Date.now();
    // Long-poll only from a state that can change by itself: a wait that starts
    // on `reconnecting` ends at `connected`, so from `connected` (or nothing yet)
    // ask plainly, or the card would never show `reconnecting`.
    const waitable = WAITABLE.includes(view.state?.status ?? "");
    const body: Record<string, unknown> = {
      device_id: view.id,
      format: "json",
      wait: waitable ? 25 : 0,
    };
    if (view.since) body.since = view.since;
    const { data, error } = await supabase.functions.invoke<QrState>("get-device-qr", {
      body,
      signal: controller.signal,
    });
    if (controller.signal.aborted) continue;
    if (error || !data) {
      note(view, `get-device-qr: ${await describeError(error)}`, "problem");
      await sleep(2_000);
      continue;
    }
    observe(view, data, started);
    // Idle states answer at once; don't spin on them. A waitable answer is
    // followed at once by a wait: a pause here would be a window in which the
    // state can change before the next call starts waiting from it.
    if (!WAITABLE.includes(data.status) && Date.now() - started < 1_000) {
      await sleep(1_500, controller.signal);
    }
  }
}

/**
 * Ends a device's wait once it is back: connected (linked) or showing a QR
 * (pairing) on a server whose running process holds it now, by the fleet seen
 * after the kill. That may be the killed server's name again, restarted. Says
 * so on the card and returns true.
 */
function recover(view: DeviceView): boolean {
  const waiting = awaitingRecovery.get(view.id);
  const state = view.state;
  if (!waiting || waiting.armedAt === null || fleetSeen.at < waiting.armedAt) return false;
  if (!state?.server) return false;
  const holder = fleetSeen.workers.get(state.server.name);
  if (holder?.state !== "running" || !holder.devices.includes(view.id)) return false;
  if (waiting.linked) {
    if (state.server.name === waiting.from) {
      // Restarted under its name: a state asked for before the new process
      // took the device may still be the dead one's.
      waiting.heldSeenAt ??= fleetSeen.answeredAt;
      if (view.stateAskedAt < waiting.heldSeenAt) return false;
    }
    if (state.status !== "connected") return false;
  } else if (!state.qr || state.qr.updated_at === waiting.qrAtKill) {
    return false;
  }
  // Measured when the page shows it: what the user waits for, long-poll included.
  const elapsedMs = Date.now() - waiting.killedAt;
  const seconds = (elapsedMs / 1000).toFixed(1);
  awaitingRecovery.delete(view.id);
  view.card.dataset.recoveredMs = String(elapsedMs);
  view.card.dataset.recoveredFrom = waiting.from;
  const again = state.server.name === waiting.from ? " (restarted)" : "";
  const text = waiting.linked
    ? `connected again on ${state.server.name}${again} ${seconds} s after ${waiting.from} died, no QR`
    : `QR back from ${state.server.name}${again} ${seconds} s after ${waiting.from} died`;
  note(view, text, "recovered");
  log(`${view.name}: ${text}`);
  return true;
}

function observe(view: DeviceView, state: QrState, askedAt: number): void {
  const before = view.state;
  view.state = state;
  view.stateAskedAt = askedAt;
  view.since = state.qr?.updated_at ?? null;
  if (before?.server?.name !== state.server?.name && state.server) {
    log(
      `${view.name}: now on ${state.server.name}${
        state.reassigned ? " (moved by this request)" : ""
      }`,
    );
  }
  if (before?.status !== state.status) log(`${view.name}: ${state.status.replace("_", " ")}`);
  if (
    !recover(view) && !heldOrReleased(view) && !awaitingRecovery.has(view.id) &&
    view.card.querySelector(".note.problem")
  ) {
    note(view, "");
  }
  render(view);
}

/**
 * A fleet incident holds the device, or released it: the card says so, and
 * when its QR is back (no owner action), how long after the hold was seen.
 */
function heldOrReleased(view: DeviceView): boolean {
  const state = view.state!;
  if (state.reason === "fleet_incident") {
    if (!heldByIncident.has(view.id)) {
      heldByIncident.add(view.id);
      view.card.dataset.heldSince = String(Date.now());
      delete view.card.dataset.incidentRecoveredMs;
      log(`${view.name}: held by the fleet incident ${state.incident?.code}`);
      note(view, `fleet incident ${state.incident?.code}: not moved, no reassignment spent`);
    }
    return true;
  }
  if (!heldByIncident.has(view.id) || !state.qr) return false;
  heldByIncident.delete(view.id);
  const heldMs = Date.now() - Number(view.card.dataset.heldSince);
  view.card.dataset.incidentRecoveredMs = String(heldMs);
  const text = `QR back from ${state.server?.name} by itself after the fleet incident ended ` +
    `(held ${(heldMs / 1000).toFixed(1)} s)`;
  note(view, text, "recovered");
  log(`${view.name}: ${text}`);
  return true;
}

/** Restart a device's long-poll now (after an action), instead of at its next change. */
function refresh(deviceId: string): void {
  devices.find((d) => d.id === deviceId)?.poll?.abort();
}

async function reassign(deviceId: string): Promise<void> {
  const view = devices.find((d) => d.id === deviceId)!;
  const { data, error } = await supabase.functions.invoke("reassign-device", {
    body: { device_id: deviceId },
  });
  if (error) {
    note(view, `reassign-device: ${await describeError(error)}`, "problem");
    return;
  }
  if (data.reason === "fleet_incident") {
    note(view, `reassign-device: fleet incident ${data.incident?.code}, nothing moved or charged`);
    log(`${view.name}: reassign-device → fleet incident, nothing charged`);
    refresh(deviceId);
    return;
  }
  note(view, `pairing started (epoch ${data.epoch})`);
  log(`${view.name}: reassign-device → ${data.to_server ? "assigned" : "waiting for a server"}`);
  refresh(deviceId);
}

async function scan(deviceId: string): Promise<void> {
  const view = devices.find((d) => d.id === deviceId)!;
  const answer = await post("/fleet/scan", { device_id: deviceId });
  note(
    view,
    answer.connected ? `scanned: ${answer.worker} reported connected` : "no server shows a QR",
  );
  refresh(deviceId);
}

async function enterCode(deviceId: string): Promise<void> {
  const view = devices.find((d) => d.id === deviceId)!;
  const code = view.state?.pairing_code?.code;
  if (!code) return;
  const answer = await post("/fleet/enter-code", { device_id: deviceId, code });
  note(
    view,
    answer.connected
      ? `code entered: ${answer.worker} reported connected`
      : "no server holds this code any more",
  );
  refresh(deviceId);
}

async function describeError(error: unknown): Promise<string> {
  // FunctionsHttpError carries the response; our functions answer {error: {code, message}}.
  const context = (error as { context?: Response } | null)?.context;
  if (context instanceof Response) {
    try {
      const body = await context.clone().json();
      const retryAfter = Number(context.headers.get("retry-after")) ||
        Math.ceil((body.error?.details?.retry_after_ms ?? 0) / 1000);
      return `${body.error?.code}: ${body.error?.message}${
        retryAfter ? ` (retry in ${retryAfter} s)` : ""
      }`;
    } catch { /* not JSON */ }
    return `HTTP ${context.status}`;
  }
  return error instanceof Error ? error.message : String(error);
}

async function post(path: string, body: unknown = {}): Promise<Record<string, unknown>> {
  const response = await fetch(path, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      [CONTROL_TOKEN_HEADER]: config.fleetControlToken,
    },
    body: JSON.stringify(body),
  });
  return await response.json();
}

async function fleetAction(name: string, verb: string): Promise<void> {
  if (verb === "kill") {
    const killedAt = Date.now();
    for (const view of devices) {
      if (view.state?.server?.name === name) {
        const linked = view.state.status === "connected" || view.state.status === "reconnecting";
        awaitingRecovery.set(view.id, {
          from: name,
          killedAt,
          linked,
          armedAt: null,
          qrAtKill: view.state.qr?.updated_at ?? null,
        });
        note(view, `${name} killed — waiting for a server…`);
      }
    }
  }
  log(`${verb} ${name}`);
  const answer = await post(`/fleet/workers/${encodeURIComponent(name)}/${verb}`);
  if (answer.error) log(`${verb} ${name} failed: ${(answer.error as { message: string }).message}`);
  const done = Date.now();
  for (const waiting of awaitingRecovery.values()) {
    if (waiting.from === name && waiting.armedAt === null) waiting.armedAt = done;
  }
  await refreshFleet();
}

async function refreshFleet(): Promise<void> {
  let payload: {
    health: {
      servers: HealthServer[];
      orphaned: number;
      stale: number;
      incidents: HealthIncident[];
    } | null;
    error: string | null;
    fleet: FleetWorker[];
    whatsapp_outage: string | null;
  };
  const asked = Date.now();
  try {
    payload = await (await fetch("/api/health")).json();
  } catch {
    document.querySelector("#health")!.textContent = "demo server unreachable";
    return;
  }
  fleetSeen = {
    at: asked,
    answeredAt: Date.now(),
    workers: new Map(payload.fleet.map((worker) => [worker.name, worker])),
  };
  for (const view of devices) recover(view);
  const servers = new Map((payload.health?.servers ?? []).map((s) => [s.name, s]));
  const rows = payload.fleet.map((worker) => {
    const server = servers.get(worker.name);
    const alive = ["starting", "running", "partitioned"].includes(worker.state);
    const button = (verb: string, label: string, enabled: boolean) =>
      element("button", {
        type: "button",
        className: verb,
        disabled: !enabled,
        onclick: () => fleetAction(worker.name, verb),
      }, label);
    return element(
      "tr",
      { dataset: { worker: worker.name, state: worker.state } },
      element("td", {}, worker.name),
      element("td", {}, element("span", { className: `badge ${worker.state}` }, worker.state)),
      element(
        "td",
        {},
        element(
          "span",
          { className: `badge ${server?.live ? "live" : "dead"}` },
          server?.live ? "live" : "not live",
        ),
      ),
      element(
        "td",
        {},
        server?.heartbeat_age_ms != null
          ? `${(server.heartbeat_age_ms / 1000).toFixed(1)} s ago`
          : "—",
      ),
      element("td", {}, String(worker.devices.length)),
      element(
        "td",
        {},
        button("kill", "Kill", alive),
        " ",
        worker.state === "partitioned"
          ? button("heal", "Heal", true)
          : button("partition", "Partition", alive),
        " ",
        button("restart", "Restart", true),
      ),
    );
  });
  document.querySelector("#fleet")!.replaceChildren(...rows);
  document.querySelector("#health")!.textContent = payload.health
    ? `orphaned devices: ${payload.health.orphaned} · stale: ${payload.health.stale}`
    : `assignment_health failed: ${payload.error}`;
  showWhatsApp(payload.whatsapp_outage);
  if (payload.health) showIncidents(payload.health.incidents);
}

/** The Break WhatsApp control: what the simulated WhatsApp does to every server now. */
function showWhatsApp(outage: string | null): void {
  const button = document.querySelector<HTMLButtonElement>("#whatsapp")!;
  button.textContent = outage ? "Mend WhatsApp" : "Break WhatsApp";
  button.dataset.outage = outage ?? "";
  document.querySelector("#whatsapp-state")!.textContent = outage
    ? `WhatsApp refuses every server: ${outage}`
    : "";
}

/** Open fleet incidents from assignment_health(), and a line in the log when one ends. */
function showIncidents(incidents: HealthIncident[]): void {
  const list = document.querySelector<HTMLElement>("#incidents")!;
  list.replaceChildren(...incidents.map((incident) =>
    element(
      "li",
      { dataset: { code: incident.code } },
      element("strong", {}, `Fleet incident ${incident.code}`),
      ` since ${new Date(incident.since).toLocaleTimeString()} · reported by ` +
        `${incident.servers.join(", ")} · ${incident.devices_held} device` +
        `${incident.devices_held === 1 ? "" : "s"} held, no reassignment spent`,
    )
  ));
  list.hidden = incidents.length === 0;
  const open = new Set(incidents.map((incident) => incident.code));
  for (const code of open) if (!incidentsSeen.has(code)) log(`fleet incident ${code} started`);
  for (const code of incidentsSeen) {
    if (!open.has(code)) log(`fleet incident ${code} ended: its devices pair again by themselves`);
  }
  incidentsSeen = open;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

document.querySelector<HTMLButtonElement>("#whatsapp")!.onclick = async (event) => {
  const button = event.currentTarget as HTMLButtonElement;
  const outage = button.dataset.outage ? null : "version_outdated";
  button.disabled = true;
  try {
    const answer = await post("/fleet/whatsapp", { outage });
    if (answer.error) log(`WhatsApp: ${(answer.error as { message: string }).message}`);
    else log(outage ? `WhatsApp broken for every server: ${outage}` : "WhatsApp mended");
    showWhatsApp((answer.whatsapp_outage as string | null) ?? null);
  } finally {
    button.disabled = false;
  }
};

document.querySelector<HTMLButtonElement>("#add-server")!.onclick = async () => {
  const answer = await post("/fleet/workers");
  log(`added ${answer.name}`);
  await refreshFleet();
};

for (const view of devices) follow(view);
setInterval(() => devices.forEach(updateExpiry), 1_000);
setInterval(refreshFleet, 1_000);
await refreshFleet();
