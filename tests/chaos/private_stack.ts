/**
 * A local stack of the chaos run's own, for the one fault that cannot be
 * injected into a shared one: restarting PostgreSQL. The checkout's
 * `supabase/`, `local/` and `deno.json` are copied to a temporary directory,
 * so `local/db.sh` and `local/gateway.sh` there keep their state (cluster,
 * signing key, logs) apart from the developer's stack, on free loopback ports.
 * Everything it starts is stopped and removed by `close()`.
 */
import { readEnvFile } from "../../worker/env.ts";

const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

export interface PrivateStack {
  root: string;
  /** SUPABASE_URL, keys, SUPABASE_DB_URL and SUPABASE_JWT_SIGNING_JWK of this stack. */
  env: Record<string, string>;
  stopDatabase(): Promise<void>;
  startDatabase(): Promise<void>;
  close(): Promise<void>;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

export async function startPrivateStack(log: (line: string) => void): Promise<PrivateStack> {
  const root = await Deno.makeTempDir({ prefix: "chaos-stack-" });
  // postgres must reach <root>/.local for the cluster to live inside the copy.
  await Deno.chmod(root, 0o755);
  const dbPort = freePort();
  const gatewayPort = freePort();
  // Its own ports, state dir and .env.local, whatever stack the caller's environment names.
  const env = {
    DB_PORT: String(dbPort),
    GATEWAY_PORT: String(gatewayPort),
    LOCAL_STATE_DIR: "",
    GATEWAY_ENV_FILE: `${root}/.env.local`,
  };

  const run = async (command: string, ...args: string[]): Promise<string> => {
    const { code, stdout, stderr } = await new Deno.Command(command, {
      args,
      cwd: root,
      env,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const out = new TextDecoder().decode(stdout).trim();
    if (code !== 0) {
      throw new Error(`${command} ${args.join(" ")}: ${new TextDecoder().decode(stderr)}${out}`);
    }
    return out;
  };

  let stateDir: string | null = null;
  const close = async () => {
    await run(`${root}/local/gateway.sh`, "stop").catch((e) => log(`private gateway: ${e}`));
    await run(`${root}/local/db.sh`, "stop").catch((e) => log(`private db: ${e}`));
    await Deno.remove(root, { recursive: true }).catch(() => {});
    if (stateDir && !stateDir.startsWith(root)) {
      await Deno.remove(stateDir, { recursive: true }).catch(() => {});
    }
  };

  try {
    for (const path of ["supabase", "local", "deno.json", "deno.lock", "package.json"]) {
      await run("cp", "-a", `${REPO}/${path}`, `${root}/`);
    }
    await Deno.remove(`${root}/supabase/.temp`, { recursive: true }).catch(() => {});
    await Deno.symlink(`${REPO}/node_modules`, `${root}/node_modules`);
    log(`private stack in ${root}: database on :${dbPort}, gateway on :${gatewayPort}`);
    await run(`${root}/local/db.sh`, "start");
    stateDir = await run(`${root}/local/db.sh`, "state-dir");
    await run(`${root}/local/gateway.sh`, "start");

    const values = readEnvFile(new URL(`file://${root}/.env.local`));
    if (!values.SUPABASE_URL) throw new Error(`the private gateway wrote no ${root}/.env.local`);
    // The copy's signing keys file, as its gateway reads it (local/gateway/keys.ts).
    const [signingKey] = JSON.parse(await Deno.readTextFile(`${root}/supabase/signing_keys.json`));
    values.SUPABASE_JWT_SIGNING_JWK = JSON.stringify(signingKey);
    return {
      root,
      env: values,
      stopDatabase: async () => {
        await run(`${root}/local/db.sh`, "stop");
      },
      startDatabase: async () => {
        await run(`${root}/local/db.sh`, "start");
      },
      close,
    };
  } catch (error) {
    await close();
    throw error;
  }
}
