/**
 * Runs one edge function in its own process, the way the platform's runtime
 * does: imports the entrypoint, whose default export is `{ fetch }`, and serves
 * it on a private port that it reports to the gateway on stdout.
 *
 * Old-style functions that call `Deno.serve(handler)` themselves are served too:
 * the call is captured before the entrypoint is imported.
 *
 * The gateway holds this process's stdin open; when the gateway dies, however
 * it dies, stdin closes and the function process exits with it.
 *
 * Usage: deno run … function_runner.ts <entrypoint file URL>
 */
export const LISTENING_MARKER = "__gateway_function_listening__";

type Handler = (request: Request) => Response | Promise<Response>;

if (import.meta.main) {
  (async () => {
    for await (const _ of Deno.stdin.readable) { /* the gateway never writes */ }
    Deno.exit(0);
  })();
  const entrypoint = Deno.args[0];
  let captured: Handler | null = null;
  const realServe = Deno.serve;
  try {
    // deno-lint-ignore no-explicit-any
    (Deno as any).serve = (...args: unknown[]) => {
      const handler = args.find((arg) => typeof arg === "function") ??
        (args[0] as { handler?: Handler } | undefined)?.handler;
      captured = handler as Handler;
      return { finished: new Promise(() => {}), shutdown: async () => {}, ref() {}, unref() {} };
    };
  } catch {
    // Deno.serve is not writable here: only `export default { fetch }` functions are served.
  }
  const module = await import(entrypoint);
  // deno-lint-ignore no-explicit-any
  (Deno as any).serve = realServe;
  const handler: Handler | null = typeof module.default?.fetch === "function"
    ? (request) => module.default.fetch(request)
    : captured;
  if (!handler) {
    console.error(`${entrypoint} has no default export { fetch } and did not call Deno.serve`);
    Deno.exit(70);
  }
  realServe({
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ port }) => console.log(`${LISTENING_MARKER} ${port}`),
  }, async (request) => {
    const response = await handler(request);
    // Deno 2.1.4's server closes the connection of a request whose body the
    // function left unread (a 413 on the declared length, a 405), racing the
    // gateway still sending it, which then sees a failed hop instead of the
    // answer. Reading the rest first keeps the answer.
    if (request.body && !request.bodyUsed) {
      await request.body.pipeTo(new WritableStream()).catch(() => {});
    }
    return response;
  });
}
