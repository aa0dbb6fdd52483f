/**
 * The documentation is part of the product: everything it points at must be
 * in the repository. Two gates:
 *
 *   - no tracked file points at the workspace outside the checkout (the brief
 *     this project started from lived beside it, in a `shared` folder that a
 *     clone does not have; the contract now lives in docs/contract.md);
 *   - every relative link in the tracked markdown reaches an existing file,
 *     and every `#anchor` into a markdown file names one of its headings.
 *
 * Both checks first prove on planted mistakes that they can fail.
 */
import assert from "node:assert/strict";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import GithubSlugger from "github-slugger";
import { marked, type Token } from "marked";

const ROOT = normalize(join(dirname(fileURLToPath(import.meta.url)), "..", ".."));

// The workspace's shared folder, by either path, and the brief it held, by name (the
// repository's own contract is docs/contract.md). Spelled in pieces so that this file
// does not match itself.
const OUTSIDE_POINTERS = [
  ["..", "shared", ""].join("/"),
  ["", "work", "shared", ""].join("/"),
  ["CONTRACT", "md"].join("."),
];

/** `path:line: text` for every line that points outside the checkout. */
function outsidePointers(files: { path: string; text: string }[]): string[] {
  const found: string[] = [];
  for (const { path, text } of files) {
    text.split("\n").forEach((line, index) => {
      if (OUTSIDE_POINTERS.some((pointer) => line.includes(pointer))) {
        found.push(`${path}:${index + 1}: ${line.trim()}`);
      }
    });
  }
  return found;
}

/** Link targets of a markdown text, as a renderer sees them (not inside code). */
function linkTargets(markdown: string): string[] {
  const targets: string[] = [];
  marked.walkTokens(marked.lexer(markdown), (token: Token) => {
    if (token.type === "link" || token.type === "image") targets.push(token.href);
  });
  return targets;
}

/** The anchors GitHub gives a markdown file's headings. */
function headingAnchors(markdown: string): Set<string> {
  const slugger = new GithubSlugger();
  const anchors = new Set<string>();
  marked.walkTokens(marked.lexer(markdown), (token: Token) => {
    if (token.type === "heading") {
      // The anchor is made from the heading's text as rendered: no code ticks, no link syntax.
      const text = token.tokens?.map((inner) =>
        "text" in inner ? inner.text : inner.raw
      ).join("") ??
        token.text;
      anchors.add(slugger.slug(text));
    }
  });
  return anchors;
}

interface Tree {
  exists(path: string): boolean;
  read(path: string): string;
}

/** `file: target (why)` for every relative link of `path` that leads nowhere. */
function brokenLinks(path: string, tree: Tree): string[] {
  const broken: string[] = [];
  for (const target of linkTargets(tree.read(path))) {
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith("//")) continue; // http:, mailto:
    const [file, anchor] = target.split("#", 2) as [string, string | undefined];
    const resolved = file === ""
      ? path
      : normalize(join(dirname(path), decodeURIComponent(file.split("?")[0]))).replace(/\/$/, "");
    if (resolved.startsWith("..") || !tree.exists(resolved)) {
      broken.push(`${path}: ${target} (no such file in the repository)`);
      continue;
    }
    if (anchor && resolved.endsWith(".md") && !headingAnchors(tree.read(resolved)).has(anchor)) {
      broken.push(`${path}: ${target} (no heading #${anchor} in ${resolved})`);
    }
  }
  return broken;
}

function trackedFiles(): string[] {
  const listed = new Deno.Command("git", { args: ["ls-files", "-z"], cwd: ROOT }).outputSync();
  assert.ok(listed.success, `git ls-files failed in ${ROOT}: this check needs a git checkout`);
  return new TextDecoder().decode(listed.stdout).split("\0").filter((path) => path !== "");
}

/** The checkout as it is on disk (a tracked file deleted in the work tree does not exist). */
function checkout(): Tree {
  return {
    exists(path) {
      try {
        Deno.statSync(join(ROOT, path));
        return true;
      } catch {
        return false;
      }
    },
    read: (path) => Deno.readTextFileSync(join(ROOT, path)),
  };
}

function fakeTree(files: Record<string, string>): Tree {
  const dirs = new Set(
    Object.keys(files).flatMap((path) => {
      const parts = path.split("/");
      return parts.slice(1).map((_, i) => parts.slice(0, i + 1).join("/"));
    }),
  );
  return {
    exists: (path) => path in files || dirs.has(path),
    read: (path) => files[path],
  };
}

Deno.test("the checks catch a pointer outside the checkout and links that lead nowhere", () => {
  assert.deepEqual(
    outsidePointers([
      {
        path: "docs/sql-api.md",
        text: `The contract (\`${OUTSIDE_POINTERS[0]}${OUTSIDE_POINTERS[2]}\`)`,
      },
      { path: "supabase/functions/_shared/http.ts", text: 'import "../_shared/rpc.ts";' },
      { path: "supabase/functions/_shared/errors.ts", text: `// (${OUTSIDE_POINTERS[2]} table)` },
      { path: "docs/contract.md", text: "# The contract" },
    ]),
    [
      `docs/sql-api.md:1: The contract (\`${OUTSIDE_POINTERS[0]}${OUTSIDE_POINTERS[2]}\`)`,
      `supabase/functions/_shared/errors.ts:1: // (${OUTSIDE_POINTERS[2]} table)`,
    ],
  );

  const tree = fakeTree({
    "README.md": [
      "# Device QR",
      "## Deploy",
      "## Upgrading a project that already has `devices`",
      "[ok](docs/a.md#the-rules) [ok](#deploy) [ok](#upgrading-a-project-that-already-has-devices)",
      "[ok](https://supabase.com) [ok](bench/) ![ok](docs/pic.png)",
      "[gone](docs/missing.md) [bad anchor](docs/a.md#nowhere) [outside](../elsewhere.md)",
      "`[in code](docs/missing-too.md)`",
      "```",
      "[in a fence](docs/missing-three.md)",
      "```",
    ].join("\n"),
    "docs/a.md": "# A\n\n## The rules\n",
    "docs/pic.png": "",
    "bench/run.ts": "",
  });
  assert.deepEqual(brokenLinks("README.md", tree), [
    "README.md: docs/missing.md (no such file in the repository)",
    "README.md: docs/a.md#nowhere (no heading #nowhere in docs/a.md)",
    "README.md: ../elsewhere.md (no such file in the repository)",
  ]);
});

Deno.test("no tracked file points at the workspace outside the checkout", () => {
  const files = trackedFiles().flatMap((path) => {
    const bytes = Deno.readFileSync(join(ROOT, path));
    return bytes.includes(0) ? [] : [{ path, text: new TextDecoder().decode(bytes) }]; // skip binaries
  });
  assert.ok(files.length > 50, `only ${files.length} text files tracked: wrong directory?`);
  assert.deepEqual(outsidePointers(files), []);
});

Deno.test("every relative link in the markdown reaches a file and a heading", () => {
  const markdown = trackedFiles().filter((path) => path.endsWith(".md"));
  assert.ok(markdown.includes("README.md") && markdown.includes("docs/contract.md"));
  const tree = checkout();
  assert.deepEqual(markdown.flatMap((path) => brokenLinks(path, tree)), []);
});
