/** The chaos run's report, in Markdown. */
import { type ChaosResult, type Invariant, INVARIANTS, violationCount } from "./model.ts";

function table(rows: [string, string | number][], head: [string, string]): string {
  if (rows.length === 0) return "_none_\n";
  return [`| ${head[0]} | ${head[1]} |`, "|---|---:|", ...rows.map(([k, v]) => `| ${k} | ${v} |`)]
    .join("\n") + "\n";
}

export function renderReport(r: ChaosResult, orphanBoundMs: number): string {
  const total = violationCount(r);
  const sorted = (o: Record<string, number>) =>
    Object.entries(o).sort((a, b) => b[1] - a[1]) as [string, number][];
  const requestRows: [string, string][] = Object.entries(r.requests).map(([what, byStatus]) => [
    what,
    Object.entries(byStatus).sort().map(([s, n]) => `${s}: ${n}`).join(", "),
  ]);
  const requestTotal = Object.values(r.requests)
    .flatMap((byStatus) => Object.values(byStatus))
    .reduce((a, b) => a + b, 0);
  const lines = [
    `# Chaos report`,
    "",
    `${total === 0 ? "**0 violations**" : `**${total} violations**`} in ${
      (r.durationMs / 1000).toFixed(1)
    } s (started ${r.startedAt}, seed ${r.options.seed}).`,
    "",
    `Fleet: ${r.options.workers} workers, ${r.options.devices} devices of ${r.options.users} users; ` +
    `heartbeat timeout ${r.options.heartbeatTimeoutS} s, worker poll ${r.options.workerPollMs} ms; ` +
    `orphan bound ${orphanBoundMs} ms; bulk all_connecting ${
      r.options.exclusive ? "real" : "dry run only (shared database)"
    }; ${r.options.dbRestart || r.options.privateStack ? "private stack" : "shared stack"}${
      r.options.dbRestart ? `, PostgreSQL stopped for ${r.options.outageSeconds} s` : ""
    }.`,
    "",
    "## Invariants",
    "",
    "| invariant | violations |",
    "|---|---:|",
    ...Object.entries(INVARIANTS).map(([key, label]) =>
      key === "outage" && !r.options.dbRestart
        ? `| ${label} | not run (no --db-restart) |`
        : `| ${label} | ${r.violations[key as Invariant].length} |`
    ),
    "",
    ...Object.entries(r.violations).flatMap(([key, list]) =>
      list.length === 0 ? [] : [`### ${key}`, "", ...list.slice(0, 20).map((v) => `- ${v}`), ""]
    ),
    "## Faults injected",
    "",
    table(sorted(r.faults), ["fault", "count"]),
    "## Requests",
    "",
    `${requestTotal} HTTP requests to the functions.`,
    "",
    table(requestRows, ["request", "statuses"]),
    ...(r.options.dbRestart
      ? [
        "## Database outage",
        "",
        `- PostgreSQL down for ${r.outage.downMs} ms`,
        `- get-device-qr while down: ${JSON.stringify(r.outage.answersWhileDown)}`,
        `- first 200 after the database returned: ${
          r.outage.recoveredAfterMs === null ? "never" : `${r.outage.recoveredAfterMs} ms`
        }`,
        "",
      ]
      : []),
    ...(r.options.whatsappOutageSeconds > 0
      ? [
        "## WhatsApp failures",
        "",
        `- WhatsApp broken for every server for ${r.incidents.outageMs} ms (version_outdated)`,
        `- fleet incidents: ${r.incidents.incidents.length} (${
          r.incidents.incidents.map((i) =>
            `ended by ${
              i.endedBy ?? "nothing yet"
            } after ${i.durationMs} ms, ${i.released} released`
          ).join("; ") || "none"
        })`,
        `- devices held: ${r.incidents.devicesHeld}; most moves of one while held: ${r.incidents.mostMovesWhileHeld}`,
        `- on a server again after the incident ended: ${
          r.incidents.recoveryMs.length
            ? `max ${
              Math.max(...r.incidents.recoveryMs)
            } ms over ${r.incidents.recoveryMs.length} devices`
            : "no device to time"
        } (bound ${r.incidents.recoveryBoundMs} ms); QR shown again: ${
          r.incidents.qrAgainMs.length
            ? `max ${Math.max(...r.incidents.qrAgainMs)} ms over ${r.incidents.qrAgainMs.length}`
            : "none seen"
        }`,
        `- one server failing alone: ${r.incidents.singleFailure}`,
        "",
      ]
      : []),
    "## Fencing",
    "",
    `- worker publishes accepted: ${r.publishesAccepted}, fenced: ${r.publishesFenced}`,
    `- stale write probes: ${r.staleProbes.attempted}, fenced: ${r.staleProbes.fenced}` +
    (Object.keys(r.staleProbes.other).length
      ? `, other answers: ${JSON.stringify(r.staleProbes.other)}`
      : ""),
    "",
    "## Linked sessions",
    "",
    `- devices linked by a scan: ${r.sessions.linked}; session failovers (audited): ${r.sessions.failovers}`,
    `- resumes started: ${r.sessions.resumesStarted}, connected again: ${r.sessions.resumesConnected}`,
    `- session writes by workers accepted: ${r.sessions.writesAccepted}, fenced: ${r.sessions.writesFenced}` +
    (r.sessions.writesOther ? `, other failures: ${r.sessions.writesOther}` : ""),
    `- stale session write probes: ${r.sessions.staleProbes.attempted}, fenced: ${r.sessions.staleProbes.fenced}` +
    (Object.keys(r.sessions.staleProbes.other).length
      ? `, other answers: ${JSON.stringify(r.sessions.staleProbes.other)}`
      : ""),
    `- moments two live workers believed they held one device (each tried against the fence): ${r.sessions.holderChecks}`,
    `- linked devices connected on a live server without a QR at the end: ${r.sessions.connectedAtEnd}/${r.sessions.linkedAtEnd} (settled ${r.sessions.settleMs} ms after the faults)`,
    "",
    "## Reassignments (audit trail of our devices)",
    "",
    table(sorted(r.reassignments), ["reason", "events"]),
    "## Orphans",
    "",
    `- database snapshots: ${r.snapshots} (every 200 ms)`,
    `- orphan episodes closed: ${r.orphanEpisodes}`,
    `- longest orphan time: ${r.longestOrphanMs} ms (any)`,
    `- longest orphan time while a live server had room: ${r.longestOrphanWithRoomMs} ms (bound ${orphanBoundMs} ms)`,
    "",
  ];
  return lines.join("\n");
}
