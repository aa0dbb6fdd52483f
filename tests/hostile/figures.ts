/** Writes the figures of one hostile test file to test-results/, for the reliability report. */
import { figures } from "./kit.ts";

export async function writeFigures(suite: string): Promise<void> {
  const dir = new URL("../../test-results/", import.meta.url).pathname;
  await Deno.mkdir(dir, { recursive: true });
  const byStatus = Object.fromEntries([...figures.byStatus].sort(([a], [b]) => a - b));
  await Deno.writeTextFile(
    `${dir}hostile-${suite}.json`,
    JSON.stringify({ suite, requests: figures.requests, by_status: byStatus }, null, 2) + "\n",
  );
}
