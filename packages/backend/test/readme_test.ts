/**
 * The README's example is readme_example.ts, which the package's tsc build
 * type-checks: the two must not drift apart.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

// This file sits one level below the package root, as test/ or as dist-test/.
const read = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), "utf8");

test("the README's backend example is readme_example.ts, which tsc checks", () => {
  const readme = read("README.md");
  const marker = readme.indexOf("<!-- test/readme_example.ts");
  assert.ok(marker >= 0, "the README lost the example's marker");
  const block = /```ts\n([\s\S]*?)```/.exec(readme.slice(marker));
  assert.ok(block, "no ```ts block after the marker");
  const example = read("test/readme_example.ts");
  // The file's doc comment says why it exists; the README shows the code after it.
  assert.equal(block[1], example.slice(example.indexOf("*/\n\n") + 4));
});
