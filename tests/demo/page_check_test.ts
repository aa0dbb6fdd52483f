import assert from "node:assert/strict";

const ROOT = new URL("../../", import.meta.url).pathname;

Deno.test("the demo page type-checks against the DOM and bundles for the browser", async () => {
  const deno = Deno.execPath();
  const check = await new Deno.Command(deno, {
    args: ["check", "--quiet", "local/demo/app.mts"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(check.code, 0, new TextDecoder().decode(check.stderr));

  const out = await Deno.makeTempFile({ suffix: ".js" });
  try {
    const bundle = await new Deno.Command(deno, {
      args: ["bundle", "--quiet", "--platform", "browser", "--output", out, "local/demo/app.mts"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(bundle.code, 0, new TextDecoder().decode(bundle.stderr));
    const code = await Deno.readTextFile(out);
    assert.ok(code.includes("functions/v1"), "supabase-js is bundled in, not loaded from a CDN");
    assert.doesNotMatch(code, /from\s*["']https?:/, "no remote imports left");
    // A browser cannot load Node's built-ins: a worker module the page imports
    // must not pull the backend package (its crypto) into the page.
    assert.doesNotMatch(code, /(from|import)\s*\(?\s*["']node:/, "no node: imports in the page");
  } finally {
    await Deno.remove(out);
  }
});
