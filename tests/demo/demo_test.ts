/**
 * The `make dev` demo in a real browser: Debian's chromium driven by
 * playwright-core. Starts local/dev.sh as a person would, opens the printed
 * URL, kills the server a QR comes from and waits for a QR from another one,
 * then links a device and kills its server: the session resumes elsewhere, no QR;
 * links a device with a pairing code ("Link with phone number instead"); last,
 * kills every server and restarts one: the cards it takes back say so.
 * A second run plays Break WhatsApp: a fleet incident holds the pairing
 * devices at no cost, and when WhatsApp is mended they pair again by themselves.
 * Screenshots and the recovery time go to test-results/.
 */
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { closeStack, getStack, sql } from "../e2e/harness.ts";
import { DEMO_USER } from "../../local/demo/seed.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const RESULTS = `${ROOT}test-results`;
const CHROMIUM = Deno.env.get("CHROMIUM_PATH") ?? "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-quic",
  "--no-first-run",
  "--disable-component-update",
  "--disable-sync",
];
const DEMO_PORT = Deno.env.get("DEMO_TEST_PORT") ?? "54339";

/** Starts local/dev.sh and resolves with its URL once it printed one. */
async function startDev(): Promise<
  { url: string; process: Deno.ChildProcess; output: () => string }
> {
  const process = new Deno.Command("bash", {
    args: [`${ROOT}local/dev.sh`],
    cwd: ROOT,
    env: { DEMO_PORT, DEMO_LOG_DIR: `${RESULTS}/demo-logs` },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
  };
  const collecting = Promise.all([collect(process.stdout), collect(process.stderr)]);
  const deadline = Date.now() + 120_000;
  while (!/^DEMO_URL=(\S+)/m.test(text)) {
    if (Date.now() > deadline) throw new Error(`local/dev.sh printed no URL:\n${text}`);
    const exited = await Promise.race([
      process.status.then(() => true),
      new Promise<false>((resolve) => setTimeout(() => resolve(false), 200)),
    ]);
    if (exited) {
      await collecting;
      throw new Error(`local/dev.sh exited before printing a URL:\n${text}`);
    }
  }
  const url = /^DEMO_URL=(\S+)/m.exec(text)![1];
  return { url, process, output: () => text };
}

/**
 * local/dev.sh with its page open in chromium. `close` stops both, and fails
 * when dev.sh does not stop on SIGTERM.
 */
async function openDemo() {
  await Deno.mkdir(RESULTS, { recursive: true });
  const dev = await startDev();
  const stopDev = async () => {
    dev.process.kill("SIGTERM");
    const status = await Promise.race([
      dev.process.status,
      new Promise<null>((resolve) => setTimeout(() => resolve(null), 30_000)),
    ]);
    if (status === null) dev.process.kill("SIGKILL");
    assert.ok(status, `local/dev.sh stops on SIGTERM:\n${dev.output()}`);
  };
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
    .catch(async (error) => {
      await stopDev();
      throw error;
    });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors: string[] = [];
  page.on("pageerror", (error) => pageErrors.push(error.message));
  await page.goto(dev.url);
  return {
    page,
    pageErrors,
    async close() {
      await browser.close();
      await stopDev();
    },
  };
}

Deno.test({
  name: "the demo shows a QR, and after its server is killed a QR from another server",
  // playwright keeps internal timers and pipes beyond browser.close().
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await getStack();
    const db = await sql();
    const [before] = await db`select heartbeat_timeout::text as t from public.assignment_settings`;
    const { page, pageErrors, close } = await openDemo();
    try {
      const card = page.locator("article.device:has(.qr img[data-server])").first();
      await card.waitFor({ state: "visible", timeout: 30_000 });
      const deviceId = await card.getAttribute("data-device-id");
      const firstQr = page.locator(`article.device[data-device-id="${deviceId}"] .qr img`);
      const server = await firstQr.getAttribute("data-server");
      assert.ok(deviceId && server, "the QR names its device and server");
      const src = await firstQr.getAttribute("src");
      assert.match(src ?? "", /^data:image\/png;base64,/);
      await page.locator(`tr[data-worker="${server}"][data-state="running"]`).waitFor();
      await page.screenshot({ path: `${RESULTS}/demo-1-qr.png`, fullPage: true });

      const killedAt = Date.now();
      await page.locator(`tr[data-worker="${server}"] button.kill`).click();
      const recovered = page.locator(
        `article.device[data-device-id="${deviceId}"][data-recovered-ms]`,
      );
      await recovered.waitFor({ timeout: 60_000 });
      const seenAfterMs = Date.now() - killedAt;
      const newServer = await recovered.locator(".qr img").getAttribute("data-server");
      assert.ok(newServer, "a QR is shown again");
      assert.notEqual(newServer, server, "the QR comes from another server");
      const recoveredMs = Number(await recovered.getAttribute("data-recovered-ms"));
      await page.locator(`tr[data-worker="${server}"][data-state="killed"]`).waitFor();
      await page.screenshot({ path: `${RESULTS}/demo-2-recovered.png`, fullPage: true });
      await Deno.writeTextFile(
        `${RESULTS}/demo-recovery.json`,
        JSON.stringify(
          { deviceId, killed: server, recoveredOn: newServer, recoveredMs, seenAfterMs },
          null,
          2,
        ) +
          "\n",
      );
      console.log(`QR back from ${newServer} ${recoveredMs} ms after ${server} was killed`);

      // "Connect" starts pairing an idle device through reassign-device.
      const idle = page.locator('article.device[data-status="not_connecting"]').first();
      const idleId = await idle.getAttribute("data-device-id");
      await idle.locator("button.connect").click();
      await page.locator(`article.device[data-device-id="${idleId}"] .qr img[data-server]`)
        .waitFor({ timeout: 30_000 });

      // "Simulate scan": the worker showing the QR reports the device connected.
      const ready = page.locator(
        `article.device[data-status="ready"]:not([data-device-id="${idleId}"])`,
      )
        .first();
      const readyId = await ready.getAttribute("data-device-id");
      await ready.locator("button.scan").click();
      await page.locator(`article.device[data-device-id="${readyId}"][data-status="connected"]`)
        .waitFor({ timeout: 30_000 });
      await page.screenshot({ path: `${RESULTS}/demo-3-connect-and-scan.png`, fullPage: true });

      // A linked device outlives its server: kill the server it is connected on;
      // the card says `reconnecting`, then `connected` on another server, and
      // never shows a QR (the session is resumed from the store).
      const linked = page.locator(`article.device[data-device-id="${readyId}"]`);
      const linkedOn = await linked.getAttribute("data-server");
      assert.ok(linkedOn, "the connected card names its server");
      // Runs in the page (a string: this file is type-checked without the DOM lib).
      await linked.evaluate(`(card) => new MutationObserver(() => {
        if (card.querySelector(".qr img")) card.dataset.qrShown = "true";
      }).observe(card, { subtree: true, childList: true })`);
      await page.locator(`tr[data-worker="${linkedOn}"] button.kill`).click();
      await page.locator(`article.device[data-device-id="${readyId}"][data-status="reconnecting"]`)
        .waitFor({ timeout: 60_000 });
      const resumed = page.locator(
        `article.device[data-device-id="${readyId}"][data-status="connected"][data-recovered-ms]`,
      );
      await resumed.waitFor({ timeout: 60_000 });
      const resumedOn = await resumed.getAttribute("data-server");
      assert.ok(resumedOn && resumedOn !== linkedOn, "connected again on another server");
      assert.equal(await resumed.getAttribute("data-qr-shown"), null, "no QR shown meanwhile");
      assert.match((await resumed.locator(".note").textContent()) ?? "", /no QR/);
      const resumedMs = Number(await resumed.getAttribute("data-recovered-ms"));
      console.log(`connected again on ${resumedOn} ${resumedMs} ms after ${linkedOn} was killed`);
      await page.screenshot({ path: `${RESULTS}/demo-4-session-resumed.png`, fullPage: true });

      // "Link with phone number instead" on the device "Connect" started pairing: a bad number
      // is refused readably, a good one gets a code shown large with its countdown, asking again
      // at once is a readable 429, and "Enter code on phone" links the device.
      const byPhone = page.locator(`article.device[data-device-id="${idleId}"]`);
      await byPhone.locator(".by-phone summary").click();
      const phoneInput = byPhone.locator('.by-phone input[type="tel"]');
      const phoneStatus = byPhone.locator(".phone-status");
      await phoneInput.fill("12345");
      await byPhone.locator("button.get-code").click();
      await byPhone.locator(".phone-status.problem").waitFor({ timeout: 10_000 });
      assert.match((await phoneStatus.textContent()) ?? "", /^invalid_request: .*pairing_phone/);
      await phoneInput.fill("+1 415 555 0123");
      await byPhone.locator("button.get-code").click();
      const withCode = page.locator(
        `article.device[data-device-id="${idleId}"][data-pairing-code="shown"]`,
      );
      await withCode.waitFor({ timeout: 30_000 });
      const shownCode = (await withCode.locator(".pairing-code .code").textContent()) ?? "";
      assert.match(shownCode, /^[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}$/, "WhatsApp's format");
      assert.match(
        (await withCode.locator(".code-expiry").textContent()) ?? "",
        /^code expires in [0-2]:[0-5]\d$/,
      );
      await page.screenshot({ path: `${RESULTS}/demo-5-pairing-code.png`, fullPage: true });
      await byPhone.locator("button.get-code").click();
      await byPhone.locator(".phone-status.problem").waitFor({ timeout: 10_000 });
      assert.match(
        (await phoneStatus.textContent()) ?? "",
        /^cooldown: .*\(retry in \d+ s\)$/,
        "asking again at once is a readable 429",
      );
      assert.equal(
        await withCode.locator(".pairing-code .code").textContent(),
        shownCode,
        "the refused request leaves the code alone",
      );
      const pageText = await page.locator("body").innerText();
      assert.ok(!pageText.replace(/\D/g, "").includes("4155550123"), "the number is shown nowhere");
      await withCode.locator("button.enter-code").click();
      await page.locator(`article.device[data-device-id="${idleId}"][data-status="connected"]`)
        .waitFor({ timeout: 30_000 });
      await page.locator(`article.device[data-device-id="${idleId}"][data-pairing-code=""]`)
        .waitFor({ timeout: 10_000 });
      await page.screenshot({ path: `${RESULTS}/demo-6-linked-by-code.png`, fullPage: true });

      // Kill every server, then restart one under its name: the linked devices come back on
      // it, and each card's note says so instead of still waiting for the server it died on.
      const running: string[] = [];
      for (const row of await page.locator('tr[data-state="running"]').all()) {
        running.push((await row.getAttribute("data-worker"))!);
      }
      assert.ok(running.length > 0, "some server runs");
      for (const name of running) {
        await page.locator(`tr[data-worker="${name}"] button.kill`).click();
        await page.locator(`tr[data-worker="${name}"][data-state="killed"]`).waitFor();
      }
      const onResumed = page.locator(`article.device[data-device-id="${readyId}"] .note`);
      assert.match((await onResumed.textContent()) ?? "", /killed — waiting for a server/);
      await page.locator(`tr[data-worker="${resumedOn}"] button.restart`).click();
      await page.locator(
        `article.device[data-device-id="${readyId}"][data-status="connected"] .note.recovered`,
        { hasText: `connected again on ${resumedOn} (restarted)` },
      ).waitFor({ timeout: 60_000 });
      // Every card it took back says so, a pairing one once it shows the new process's QR.
      await page.locator("article.device .note", { hasText: "waiting" }).first()
        .waitFor({ state: "hidden", timeout: 60_000 });
      const notes = await page.locator('article.device[data-status="connected"] .note')
        .allTextContents();
      assert.ok(notes.length > 0, "a card is connected");
      for (const text of notes) {
        assert.doesNotMatch(text, /waiting/, "a connected card waits for nothing");
      }
      await page.screenshot({ path: `${RESULTS}/demo-7-restarted.png`, fullPage: true });
      assert.deepEqual(pageErrors, [], "no uncaught error in the page");
    } finally {
      await close();
    }
    // Everything it started is gone: the demo port is closed.
    await assert.rejects(
      fetch(`http://127.0.0.1:${DEMO_PORT}/`, { signal: AbortSignal.timeout(2_000) }),
      "the demo server is stopped",
    );
    // And it leaves the database as it found it: no demo device left connecting
    // (orphaned), the heartbeat timeout restored.
    const [after] = await db`select heartbeat_timeout::text as t from public.assignment_settings`;
    const [left] = await db`select count(*)::int as n from public.devices
                            where user_id = ${DEMO_USER.id} and status = 'connecting'`;
    await closeStack();
    assert.equal(after.t, before.t);
    assert.equal(left.n, 0);
  },
});

Deno.test({
  name: "Break WhatsApp: a fleet incident holds the devices, charges nothing, and ends by itself",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await getStack();
    const db = await sql();
    const [before] = await db`select incident_window::text as w from public.assignment_settings`;
    const { page, pageErrors, close } = await openDemo();
    try {
      // The three pairing devices show QRs, one per server.
      await page.locator('article.device[data-status="ready"]').nth(2)
        .waitFor({ timeout: 30_000 });
      const pairing: string[] = [];
      for (const card of await page.locator('article.device[data-status="ready"]').all()) {
        pairing.push((await card.getAttribute("data-device-id"))!);
      }
      assert.equal(pairing.length, 3, "three pairing devices");
      const [spentBefore] = await db`
        select coalesce(sum(reassign_count), 0)::int as n from public.devices
        where id = any(${pairing}::uuid[])`;
      const brokenAt = new Date();

      await page.locator('#whatsapp[data-outage=""]').click();
      await page.locator('#whatsapp[data-outage="version_outdated"]').waitFor();
      // Every pairing card is held by the incident, and says which, within a
      // few re-checks of its long-poll; the fleet panel shows it.
      for (const id of pairing) {
        await page.locator(
          `article.device[data-device-id="${id}"][data-status="pending"][data-reason="fleet_incident"]`,
          { hasText: "WhatsApp fails on every server (version_outdated)" },
        ).waitFor({ timeout: 10_000 });
      }
      const incident = page.locator('#incidents li[data-code="version_outdated"]');
      await page.locator('#incidents li[data-code="version_outdated"]', {
        hasText: "3 devices held",
      }).waitFor({ timeout: 15_000 });
      assert.match(
        (await incident.textContent()) ?? "",
        /^Fleet incident version_outdated since .* reported by demo-server-\d, demo-server-\d/,
      );

      // The owner's reassign during the incident is answered with it, and charges nothing.
      const held = page.locator(`article.device[data-device-id="${pairing[0]}"]`);
      await held.locator("button.connect").click();
      await page.locator("#log li", {
        hasText: "reassign-device → fleet incident, nothing charged",
      }).first().waitFor({ timeout: 10_000 });
      await page.screenshot({ path: `${RESULTS}/demo-8-fleet-incident.png`, fullPage: true });

      await page.locator('#whatsapp[data-outage="version_outdated"]').click();
      await page.locator('#whatsapp[data-outage=""]').waitFor();
      // Nobody acts: once the window passed with no new report, each card's own
      // poll ends the incident and the devices show QRs again.
      try {
        for (const id of pairing) {
          await page.locator(
            `article.device[data-device-id="${id}"][data-status="ready"][data-incident-recovered-ms]`,
          ).waitFor({ timeout: 90_000 });
        }
      } catch (error) {
        // What the database and the page saw, for a failure that must be explained.
        await page.screenshot({ path: `${RESULTS}/demo-9-not-recovered.png`, fullPage: true });
        const incidents = await db`
          select id, code, started_at, ended_at, ended_by, devices_released
          from device_assignment.fleet_incidents where started_at >= ${brokenAt} order by id`;
        const reports = await db`
          select r.code, s.server_name, r.reported_at from device_assignment.failure_reports r
          left join public.backend_servers s on s.id = r.server_id
          where r.reported_at >= ${brokenAt} order by r.reported_at`;
        const rows = await db`
          select id, status, last_error, assigned_server_id, qr_updated_at from public.devices
          where id = any(${pairing}::uuid[])`;
        throw new Error(
          `${error}\nincidents ${JSON.stringify(incidents)}\nreports ${JSON.stringify(reports)}` +
            `\ndevices ${JSON.stringify(rows)}\nlog ${
              (await page.locator("#log").innerText()).slice(0, 3000)
            }`,
        );
      }
      await incident.waitFor({ state: "detached", timeout: 15_000 });
      await page.locator("#log li", { hasText: "fleet incident version_outdated ended" }).first()
        .waitFor({ timeout: 15_000 });
      await page.screenshot({ path: `${RESULTS}/demo-9-incident-ended.png`, fullPage: true });

      // The audit: one incident, opened and ended; no device moved or charged for it.
      const incidents = await db`
        select ended_by, devices_released from device_assignment.fleet_incidents
        where started_at >= ${brokenAt} order by id`;
      assert.equal(incidents.length, 1, "one incident");
      assert.ok(incidents[0].ended_by, "it ended");
      const [moves] = await db`
        select count(*)::int as n from public.device_assignment_events
        where device_id = any(${pairing}::uuid[]) and created_at >= ${brokenAt}
          and reason in ('server_failure', 'user_request', 'stale_qr')`;
      assert.equal(moves.n, 0, "no device was moved for the failure or charged for the reassign");
      const [spentAfter] = await db`
        select coalesce(sum(reassign_count), 0)::int as n from public.devices
        where id = any(${pairing}::uuid[]) and last_error is null`;
      assert.ok(
        spentAfter.n <= spentBefore.n + pairing.length,
        `at most the one move back to a server each (${spentBefore.n} → ${spentAfter.n})`,
      );
      assert.deepEqual(pageErrors, [], "no uncaught error in the page");
    } finally {
      await close();
    }
    const [after] = await db`select incident_window::text as w from public.assignment_settings`;
    await closeStack();
    assert.equal(after.w, before.w, "the demo restores the incident window");
  },
});
