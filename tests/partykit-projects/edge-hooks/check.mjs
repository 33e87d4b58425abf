#!/usr/bin/env node
// Checks of the edge-hooks fixture against a running server (Partyline or `partykit dev`):
// onSocket (a WebSocket outside any room: frames both ways, close codes both ways, other rooms
// reached from it), onCron through dev's /__scheduled__, and onFetch for the same paths
// without an upgrade.
//
//   node check.mjs 127.0.0.1:1999              dev (Partyline or PartyKit)
//   node check.mjs 127.0.0.1:1999 --scheduled  also: the crons fire by themselves, once per
//                                              due time (Partyline schedules them)
//   node check.mjs 127.0.0.1:1999 --cluster    through a cluster: crons fire by themselves, and
//                                              /__scheduled__ is not a route (dev only)

import WebSocket from "ws";
import { assert, assertEq, check, finish, hostArg, watchdog } from "../lib/checks.mjs";

const HOST = hostArg("check.mjs");
const base = `http://${HOST}`;
const cluster = process.argv.includes("--cluster");
const scheduled = cluster || process.argv.includes("--scheduled");
watchdog(90);

/** A WebSocket with a queue of its messages and its close. */
function open(path) {
  const ws = new WebSocket(`ws://${HOST}${path}`);
  const messages = [];
  const waiters = [];
  ws.on("message", (data) => {
    messages.push(String(data));
    while (waiters.length) waiters.shift()();
  });
  const closed = new Promise((resolve) => ws.on("close", (code, reason) => resolve({ code, reason: String(reason) })));
  const opened = new Promise((resolve, reject) => {
    ws.on("open", resolve);
    ws.on("error", reject);
  });
  return {
    ws,
    opened,
    closed,
    async next() {
      while (!messages.length) await new Promise((r) => waiters.push(r));
      return messages.shift();
    },
  };
}

async function entries(room) {
  const res = await fetch(`${base}/parties/main/${room}`);
  assertEq(res.status, 200, `GET /parties/main/${room}`);
  return res.json();
}

async function eventually(what, fn, seconds = 30) {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    const out = await fn();
    if (out) return out;
    if (Date.now() > until) throw new Error(`${what}: not within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

await check("onSocket takes a WebSocket outside any room", async () => {
  const s = open("/socket?name=ada");
  await s.opened;
  assertEq(await s.next(), "hello ada", "the greeting sent by the hook");
  s.ws.send("one");
  assertEq(await s.next(), "echo one", "a listener's answer");
  s.ws.send("crons");
  assertEq(await s.next(), "crons true", "a room reached from the socket's listener");
  s.ws.send("bye");
  assertEq(await s.closed, { code: 4001, reason: "bye ada" }, "the close the hook sent");
});

await check("the hook's socket hears the client's close code", async () => {
  const s = open("/socket?name=bob");
  await s.opened;
  assertEq(await s.next(), "hello bob", "greeting");
  s.ws.close(4002, "client leaves");
  await s.closed;
  const found = await eventually("the close in the closes room", async () =>
    (await entries("closes")).find((e) => e.name === "bob"));
  assertEq(found, { name: "bob", code: 4002, reason: "client leaves" }, "close event");
});

await check("an onSocket that throws refuses the upgrade with 500", async () => {
  const ws = new WebSocket(`ws://${HOST}/socket?name=refused`);
  const status = await new Promise((resolve) => {
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
    ws.on("open", () => resolve("open"));
    ws.on("error", () => {});
  });
  ws.terminate();
  assertEq(status, 500, "the answer to the upgrade");
});

await check("the same path without an upgrade goes to onFetch", async () => {
  const res = await fetch(`${base}/socket`);
  assertEq(res.status, 200, "status");
  assertEq(await res.text(), "fetch /socket", "body");
});

if (!cluster) {
  await check("/__scheduled__?cron=NAME runs onCron now (dev)", async () => {
    const res = await fetch(`${base}/__scheduled__?cron=every-minute`);
    assertEq(res.status, 200, "status");
    assertEq(await res.text(), "ran cron every-minute: * * * * *", "body");
    const found = (await entries("crons")).find((e) => e.name === "every-minute");
    assert(found, "onCron wrote its entry before the answer");
    assertEq(found.cron, "* * * * *", "cron");
    assert(typeof found.scheduledTime === "number", "scheduledTime is a number");
  });
} else {
  await check("/__scheduled__ is no route on a cluster (anyone could run a cron)", async () => {
    const res = await fetch(`${base}/__scheduled__?cron=every-minute`);
    assertEq(await res.text(), "fetch /__scheduled__", "onFetch answered it");
  });
}

if (scheduled) {
  await check("a cron fires by itself, once per due time", async () => {
    const fast = await eventually("three firings of `fast`", async () => {
      const fired = (await entries("crons")).filter((e) => e.name === "fast");
      return fired.length >= 3 ? fired : null;
    });
    const times = fast.map((e) => e.scheduledTime);
    assertEq(new Set(times).size, times.length, "distinct due times (none ran twice)");
    for (const t of times) {
      assertEq(t % 2000, 0, `due time ${t} on an even second`);
      assertEq(fast[0].cron, "*/2 * * * * *", "cron");
    }
    return `${times.length} firings`;
  });
}

finish();
