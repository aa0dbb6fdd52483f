/**
 * Each function's module graph is pinned by its own frozen deno.lock, which
 * set-up (`functions.ts cache`) and every function process read: a stale or
 * edited lockfile fails at set-up, and a newer release on the registry changes
 * nothing that runs. The last two tests start from an empty DENO_DIR, as CI
 * and every new user do.
 */
import assert from "node:assert/strict";
import { EDGE_RUNTIME_DENO, processPlumbing } from "../../local/gateway/functions.ts";
import { startGateway } from "./instance.ts";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const FUNCTIONS = ["get-device-qr", "reassign-device"];

interface DenoLock {
  version: string;
  specifiers: Record<string, string>;
  npm: Record<string, { integrity: string }>;
  workspace: { dependencies: string[] };
}

const readJson = async <T>(path: string): Promise<T> => JSON.parse(await Deno.readTextFile(path));

/** A copy of the project's supabase/ folder to break on purpose. */
async function copyProject(): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "function-lock-" });
  const { code } = await new Deno.Command("cp", { args: ["-a", `${REPO}/supabase`, root] })
    .output();
  assert.equal(code, 0);
  return `${root}/supabase`;
}

async function editJson<T>(path: string, edit: (value: T) => void): Promise<void> {
  const value = await readJson<T>(path);
  edit(value);
  await Deno.writeTextFile(path, JSON.stringify(value, null, 2) + "\n");
}

/** `functions.ts cache` (what local/setup.sh runs) on a copy, with extra environment. */
async function setUp(supabase: string, env: Record<string, string> = {}) {
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      `${REPO}/local/gateway/functions.ts`,
      "cache",
      `${supabase}/functions`,
      `${supabase}/config.toml`,
    ],
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, stderr: new TextDecoder().decode(stderr) };
}

Deno.test("each function's deno.json freezes its own lockfile, which the edge runtime's Deno reads", async () => {
  for (const name of FUNCTIONS) {
    const dir = `${REPO}/supabase/functions/${name}`;
    const config = await readJson<{ lock: unknown; imports: Record<string, string> }>(
      `${dir}/deno.json`,
    );
    assert.deepEqual(config.lock, { path: "./deno.lock", frozen: true }, name);
    const lock = await readJson<DenoLock>(`${dir}/deno.lock`);
    // Lockfile v4 is what Deno 2.1.4 writes and reads (v5 came with Deno 2.3).
    assert.equal(lock.version, "4", name);
    const pinned = [...new Set(Object.values(config.imports).map((s) => s.replace(/\/[^@]*$/, "")))]
      .sort();
    assert.deepEqual(lock.workspace.dependencies, pinned, `${name}: lock and imports agree`);
    const copies = Object.keys(lock.npm).filter((key) => key.startsWith("@supabase/supabase-js@"));
    assert.deepEqual(copies, ["@supabase/supabase-js@2.119.1"], `${name}: one supabase-js`);
    // @supabase/server's peer is the pinned supabase-js, not a version of its own.
    const server = Object.keys(lock.npm).filter((key) => key.startsWith("@supabase/server@"));
    assert.deepEqual(server, ["@supabase/server@1.8.1_@supabase+supabase-js@2.119.1"], name);
    for (const [key, entry] of Object.entries(lock.npm)) {
      assert.match(entry.integrity, /^sha512-/, `${name}: ${key} has an integrity`);
    }
  }
});

Deno.test("set-up refuses a function whose graph no frozen lockfile pins", async () => {
  const supabase = await copyProject();
  try {
    await editJson<Record<string, unknown>>(
      `${supabase}/functions/reassign-device/deno.json`,
      (config) => (config.lock = false),
    );
    const { code, stderr } = await setUp(supabase);
    assert.equal(code, 1);
    assert.match(stderr, /function reassign-device does not pin its graph with a frozen lockfile/);
  } finally {
    await Deno.remove(supabase.replace(/\/supabase$/, ""), { recursive: true });
  }
});

Deno.test("set-up fails loudly on a stale lockfile: a dependency changed in deno.json only", async () => {
  const supabase = await copyProject();
  try {
    await editJson<{ imports: Record<string, string> }>(
      `${supabase}/functions/get-device-qr/deno.json`,
      (config) => (config.imports.zod = "npm:zod@4.6.6"),
    );
    const { code, stderr } = await setUp(supabase);
    assert.equal(code, 1);
    assert.match(stderr, /The lockfile is out of date/);
    assert.match(stderr, /deno cache of function get-device-qr failed/);
  } finally {
    await Deno.remove(supabase.replace(/\/supabase$/, ""), { recursive: true });
  }
});

Deno.test("set-up fails loudly on an edited lockfile: an integrity that is not the package's", async () => {
  const supabase = await copyProject();
  const cache = await Deno.makeTempDir({ prefix: "empty-deno-dir-" });
  try {
    await editJson<DenoLock>(`${supabase}/functions/reassign-device/deno.lock`, (lock) => {
      const entry = lock.npm["zod@4.6.7"];
      entry.integrity = entry.integrity.replace(
        /^sha512-./,
        (head) => head.endsWith("A") ? "sha512-B" : "sha512-A",
      );
    });
    const { code, stderr } = await setUp(supabase, { DENO_DIR: cache });
    assert.equal(code, 1);
    assert.match(stderr, /[Ii]ntegrity check failed/);
    assert.match(stderr, /zod/);
  } finally {
    await Deno.remove(supabase.replace(/\/supabase$/, ""), { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

/**
 * The npm registry as it will be next month: every packument passes through
 * unchanged, but @supabase/supabase-js has a newer release, 2.999.0, tagged
 * latest, whose tarball is gone. Anything resolved at run time instead of read
 * from the lock picks it and fails.
 */
function futureRegistry() {
  const upstream = "https://registry.npmjs.org";
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (request) => {
    const path = new URL(request.url).pathname;
    if (path.startsWith("/gone/")) return new Response("gone", { status: 404 });
    const response = await fetch(`${upstream}${path}`, {
      headers: { accept: request.headers.get("accept") ?? "application/json" },
    });
    if (decodeURIComponent(path) !== "/@supabase/supabase-js" || !response.ok) {
      const headers = new Headers(response.headers);
      headers.delete("content-encoding");
      headers.delete("content-length");
      return new Response(response.body, { status: response.status, headers });
    }
    const packument = await response.json();
    const next = structuredClone(packument.versions["2.119.1"]);
    next.version = "2.999.0";
    next.dist = { ...next.dist, tarball: `${url}/gone/supabase-js-2.999.0.tgz` };
    packument.versions["2.999.0"] = next;
    packument["dist-tags"].latest = "2.999.0";
    if (packument.time) packument.time["2.999.0"] = new Date().toISOString();
    return Response.json(packument);
  });
  const url = `http://127.0.0.1:${server.addr.port}`;
  return { url, close: () => server.shutdown() };
}

async function serveFrom(supabase: string, env: Record<string, string>, name: string) {
  const gateway = await startGateway({
    ...env,
    FUNCTIONS_DIR: `${supabase}/functions`,
    FUNCTIONS_CONFIG: `${supabase}/config.toml`,
    GATEWAY_WATCH: "0",
  });
  try {
    const response = await fetch(`${gateway.url}/functions/v1/${name}`, { method: "POST" });
    const body = await response.text();
    const log = await Deno.readTextFile(`${gateway.stateDir}/gateway/functions/${name}.log`)
      .catch(() => "");
    return { status: response.status, body, log };
  } finally {
    await gateway.stop();
  }
}

Deno.test("a newer release on the registry changes nothing: empty cache, locked set-up, the function runs", async () => {
  const registry = futureRegistry();
  const supabase = await copyProject();
  const cache = await Deno.makeTempDir({ prefix: "empty-deno-dir-" });
  const env = { DENO_DIR: cache, NPM_CONFIG_REGISTRY: `${registry.url}/` };
  try {
    const setup = await setUp(supabase, env);
    assert.equal(setup.code, 0, setup.stderr);
    const served = await serveFrom(supabase, env, "reassign-device");
    // Booted and answered by the function itself: no credentials is its own 401.
    assert.equal(served.status, 401, served.body);
    assert.doesNotMatch(served.log, /2\.999\.0/);
    // Deno keeps one folder per registry host in its npm cache.
    const cached = [];
    for (const registryDir of Deno.readDirSync(`${cache}/npm`)) {
      const dir = `${cache}/npm/${registryDir.name}/@supabase/supabase-js`;
      try {
        for (const entry of Deno.readDirSync(dir)) {
          if (entry.isDirectory) cached.push(`${registryDir.name} ${entry.name}`);
        }
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
    }
    assert.deepEqual(cached.map((line) => line.split(" ")[1]), ["2.119.1"]);
  } finally {
    await registry.close();
    await Deno.remove(supabase.replace(/\/supabase$/, ""), { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});

Deno.test("without the lock (as before), the same registry breaks the same function at its first request", async () => {
  const registry = futureRegistry();
  const supabase = await copyProject();
  const cache = await Deno.makeTempDir({ prefix: "empty-deno-dir-" });
  const env = { DENO_DIR: cache, NPM_CONFIG_REGISTRY: `${registry.url}/` };
  try {
    const dir = `${supabase}/functions/reassign-device`;
    await editJson<Record<string, unknown>>(`${dir}/deno.json`, (config) => (config.lock = false));
    // The set-up this project had: cache the entrypoint's static graph, unlocked.
    const { code } = await new Deno.Command(EDGE_RUNTIME_DENO, {
      args: ["cache", "--quiet", "--config", `${dir}/deno.json`, `${dir}/index.ts`],
      env: processPlumbing({ ...Deno.env.toObject(), ...env }),
      clearEnv: true,
    }).output();
    assert.equal(code, 0);
    const served = await serveFrom(supabase, env, "reassign-device");
    assert.equal(served.status, 503, served.body);
    assert.match(served.log, /@supabase\/supabase-js@2\.999\.0/);
  } finally {
    await registry.close();
    await Deno.remove(supabase.replace(/\/supabase$/, ""), { recursive: true });
    await Deno.remove(cache, { recursive: true });
  }
});
