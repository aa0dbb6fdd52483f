/**
 * The fleet simulator as a program:
 *
 *   deno run -A worker/fleet_cli.ts [--workers 3] [--prefix sim] [--control-port 54330]
 *
 * with the loopback HTTP control API (fleet_control.ts) and the same verbs on
 * stdin (`kill sim-1`, `partition sim-2`, `add`, `list`, …). Ctrl-C stops every
 * worker gracefully.
 */
import type { FailureClass } from "@device-qr/backend";
import { CONTROL_TOKEN_HEADER } from "./control_auth.ts";
import { workerEnv } from "./env.ts";
import { Fleet } from "./fleet.ts";
import { fleetControl, json } from "./fleet_control.ts";

const args = Deno.args;
const flag = (name: string, fallback: string) => {
  const index = args.indexOf(`--${name}`);
  return index >= 0 && args[index + 1] ? args[index + 1] : fallback;
};
const count = Number(flag("workers", "3"));
const port = Number(flag("control-port", "54330"));
const fleet = new Fleet({
  env: workerEnv(),
  prefix: flag("prefix", "sim"),
  onEvent: (event) => {
    if (event.type !== "heartbeat") console.log(JSON.stringify(event));
  },
});
const server = Deno.serve(
  { hostname: "127.0.0.1", port, onListen: () => {} },
  async (request) =>
    (await fleetControl(fleet, request)) ?? json({ error: { code: "not_found" } }, 404),
);
let stopping = false;
const shutdown = async () => {
  if (stopping) return;
  stopping = true;
  await fleet.stopAll();
  await server.shutdown();
  Deno.exit(0);
};
Deno.addSignalListener("SIGINT", shutdown);
Deno.addSignalListener("SIGTERM", shutdown);
await fleet.start(count);
console.error(
  `fleet: ${count} workers; control API on http://127.0.0.1:${port}/fleet ` +
    `(state changes need the header ${CONTROL_TOKEN_HEADER}: ${fleet.controlToken})`,
);

// The same verbs on stdin: `kill sim-1`, `partition sim-2 [self-fence]`, `add`, `list`,
// `whatsapp version_outdated` / `whatsapp ok`, …
let buffer = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buffer += chunk;
  let newline;
  while ((newline = buffer.indexOf("\n")) >= 0) {
    const [verb, name, option] = buffer.slice(0, newline).trim().split(/\s+/);
    buffer = buffer.slice(newline + 1);
    try {
      if (verb === "list") console.error(JSON.stringify(fleet.list(), null, 2));
      else if (verb === "add") console.error(`added ${fleet.add(name)}`);
      else if (verb === "kill") await fleet.kill(name);
      else if (verb === "stop") await fleet.stop(name);
      else if (verb === "restart") await fleet.restart(name);
      else if (verb === "heal") await fleet.heal(name);
      else if (verb === "partition") {
        await fleet.partition(name, { selfFencing: option === "self-fence" });
      } else if (verb === "scan") console.error(`connected by ${await fleet.scan(name)}`);
      else if (verb === "enter-code") {
        console.error(`connected by ${await fleet.enterCode(name, option ?? "")}`);
      } else if (verb === "whatsapp") {
        await fleet.setWhatsAppOutage(name === "ok" ? null : name as FailureClass);
      } else if (verb) console.error(`unknown command ${verb}`);
    } catch (error) {
      console.error(error instanceof Error ? error.message : String(error));
    }
  }
}
