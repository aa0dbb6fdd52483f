/**
 * Reads the stack's URL and keys from the environment, falling back to the
 * git-ignored `.env.local` that `make up` writes (what `supabase status` prints).
 */
export function stackEnv(): {
  url: string;
  secretKey: string;
  publishableKey?: string;
  dbUrl?: string;
} {
  const fileVars = readEnvFile(localEnvFile());
  const get = (name: string) => Deno.env.get(name) ?? fileVars[name];
  const url = get("SUPABASE_URL");
  const secretKey = get("SUPABASE_SECRET_KEY") ?? get("SUPABASE_SERVICE_ROLE_KEY");
  if (!url || !secretKey) {
    throw new Error(
      "SUPABASE_URL and SUPABASE_SECRET_KEY (or SUPABASE_SERVICE_ROLE_KEY) must be set, " +
        "or run `make up` to write .env.local",
    );
  }
  return {
    url,
    secretKey,
    publishableKey: get("SUPABASE_PUBLISHABLE_KEY") ?? get("SUPABASE_ANON_KEY"),
    dbUrl: get("SUPABASE_DB_URL"),
  };
}

/**
 * Where the local stack's gateway wrote its URL and keys: GATEWAY_ENV_FILE when
 * set (make test's own stack keeps its file in its state dir), else `.env.local`.
 */
export function localEnvFile(): URL {
  const path = Deno.env.get("GATEWAY_ENV_FILE");
  return path ? new URL(`file://${path}`) : new URL("../.env.local", import.meta.url);
}

export function readEnvFile(path: URL): Record<string, string> {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return {};
  }
  const vars: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const match = line.match(/^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/);
    if (!match) continue;
    vars[match[1]] = match[2].replace(/^(['"])(.*)\1$/, "$2");
  }
  return vars;
}

/** Environment for workers from the stack's env, plus WORKER_* / QR_* overrides of this process. */
export function workerEnv(): Record<string, string> {
  const stack = stackEnv();
  const env: Record<string, string> = {
    SUPABASE_URL: stack.url,
    SUPABASE_SECRET_KEY: stack.secretKey,
    ...(stack.publishableKey ? { SUPABASE_PUBLISHABLE_KEY: stack.publishableKey } : {}),
    PATH: Deno.env.get("PATH") ?? "",
    HOME: Deno.env.get("HOME") ?? "",
  };
  for (const [key, value] of Object.entries(Deno.env.toObject())) {
    if (key.startsWith("WORKER_") || key.startsWith("QR_") || key.startsWith("DENO_")) {
      env[key] = value;
    }
  }
  return env;
}
