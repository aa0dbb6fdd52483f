/**
 * `make dev` never borrows another checkout's stack: a port held by anything
 * but this checkout's own database or gateway stops it with a message naming
 * the port and its holder.
 */
import assert from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url).pathname;

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

for (const [what, variable] of [["database", "DB_PORT"], ["API gateway", "GATEWAY_PORT"]]) {
  Deno.test(`make dev refuses the ${what} port held by someone else, naming the holder`, async () => {
    // Stands in for another checkout's stack on the port this one would use.
    const squatter = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const held = (squatter.addr as Deno.NetAddr).port;
    const env: Record<string, string> = {
      DB_PORT: String(freePort()),
      GATEWAY_PORT: String(freePort()),
      DEMO_PORT: String(freePort()),
      [variable]: String(held),
    };
    try {
      const { code, stderr } = await new Deno.Command("bash", {
        args: [`${ROOT}local/dev.sh`],
        cwd: ROOT,
        env,
        stdin: "null",
        stdout: "null",
        stderr: "piped",
        signal: AbortSignal.timeout(30_000),
      }).output();
      const message = new TextDecoder().decode(stderr);
      assert.notEqual(code, 0, message);
      assert.match(message, new RegExp(`port ${held} \\(${what}\\) is held by pid ${Deno.pid} `));
      assert.match(message, /not this checkout's stack/);
      assert.doesNotMatch(message, /\[db\] running|\[gateway\] running/, "it started nothing");
    } finally {
      squatter.close();
    }
  });
}
