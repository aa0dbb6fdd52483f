import assert from "node:assert/strict";
import { test } from "node:test";
import { DisconnectReason } from "baileys";
import { baileysFailureReport, failureClassOf } from "@device-qr/backend/baileys";

test("Baileys' disconnect reasons map to failure classes", () => {
  assert.equal(failureClassOf(405), "version_outdated");
  assert.equal(failureClassOf(429), "rate_limited");
  assert.equal(failureClassOf(DisconnectReason.forbidden), "rate_limited");
  assert.equal(failureClassOf(DisconnectReason.connectionLost), "connection_failure");
  assert.equal(failureClassOf(DisconnectReason.connectionClosed), "connection_failure");
  assert.equal(failureClassOf(DisconnectReason.badSession), "server_error");
  assert.equal(failureClassOf(undefined), "server_error");
  assert.equal(failureClassOf(DisconnectReason.loggedOut), null);
});

test("a closed socket becomes the report the database classifies", () => {
  const boom = Object.assign(new Error("Connection Failure"), { output: { statusCode: 405 } });
  assert.deepEqual(baileysFailureReport(boom), {
    status: "error",
    error: "version_outdated: Connection Failure",
  });
  const loggedOut = Object.assign(new Error("Logged Out"), { output: { statusCode: 401 } });
  assert.deepEqual(baileysFailureReport(loggedOut), { status: "logged_out" });
});
