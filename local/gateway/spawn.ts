/**
 * Starts local/gateway/main.ts as a child process with the given environment
 * (GATEWAY_PORT=0 picks a free port) and resolves once it listens. For the
 * fidelity tests and the benchmarks, which each need a private gateway beside
 * the shared one on :54321.
 */
const GATEWAY_MAIN = new URL("./main.ts", import.meta.url).pathname;
const REPO = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");

export interface SpawnedGateway {
  url: string;
  child: Deno.ChildProcess;
  /** SIGTERM, then waits for the process and its output to end. */
  stop(): Promise<void>;
}

/** `onSpawn` sees the process before it listens, e.g. to kill it if the caller is interrupted. */
export async function spawnGateway(
  env: Record<string, string>,
  onSpawn: (child: Deno.ChildProcess) => void = () => {},
): Promise<SpawnedGateway> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--quiet", "--unstable-no-legacy-abort", GATEWAY_MAIN],
    cwd: REPO,
    env: { GATEWAY_PORT: "0", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  onSpawn(child);

  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let output = "";
  let url: string | null = null;
  while (url === null) {
    const { value, done } = await reader.read();
    if (done) {
      const errors = await new Response(child.stderr).text();
      throw new Error(`gateway exited before listening:\n${output}\n${errors}`);
    }
    output += value;
    url = /gateway listening on (\S+)/.exec(output)?.[1] ?? null;
  }
  // Keep reading so the gateway never blocks on a full pipe.
  const drained = Promise.all([
    (async () => {
      while (!(await reader.read()).done) { /* discard */ }
    })(),
    child.stderr.pipeTo(new WritableStream()),
  ]);

  return {
    url,
    child,
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
      await drained.catch(() => {});
    },
  };
}
