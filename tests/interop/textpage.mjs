#!/usr/bin/env node
// Browser check of the collaborative text page (`/text`): headless Chromium, driven over the
// DevTools protocol, opens the page twice (two tabs, one room) on a running Partyline server,
// types into each textarea and checks that the other tab shows it. The page sets
// `disableBc: true`, so the tabs can only meet through the server. This script does NOT start
// a server.
//
//   node tests/interop/textpage.mjs 127.0.0.1:1999 [path-to-chromium]
//
// Prints one PASS/FAIL line per check and `N passed, N failed`; exits 1 if a check failed,
// 2 on bad usage or when Chromium cannot start.

import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomUUID } from "node:crypto";

let WS;
try {
  ({ default: WS } = await import("ws"));
} catch (err) {
  console.error(`cannot load ws (${err.message}); run \`npm ci\` in tests/interop first`);
  process.exit(2);
}

const HOST = process.argv[2] ?? "";
const CHROMIUM = process.argv[3] ?? process.env.CHROMIUM ?? "chromium";
if (!/^[^\s/]+:\d+$/.test(HOST)) {
  console.error("usage: node textpage.mjs <host:port> [path-to-chromium]");
  process.exit(2);
}
const WAIT_MS = 15000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- Chromium and CDP

const profile = mkdtempSync(join(tmpdir(), "partyline-textpage-"));
const browser = spawn(
  CHROMIUM,
  [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    // Both tabs stay foreground-fast: no timer throttling of the tab that is not in front.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    `--user-data-dir=${profile}`,
    "--remote-debugging-port=0",
    "about:blank",
  ],
  { stdio: ["ignore", "ignore", "pipe"] },
);
let exited = false;
browser.on("exit", () => (exited = true));
browser.on("error", (err) => {
  console.error(`cannot start ${CHROMIUM}: ${err.message}`);
  process.exit(2);
});

function stop(code) {
  if (!exited) browser.kill("SIGTERM");
  setTimeout(() => {
    try {
      rmSync(profile, { recursive: true, force: true });
    } catch {}
    process.exit(code);
  }, 300);
}

const endpoint = await new Promise((resolve, reject) => {
  let err = "";
  const t = setTimeout(() => reject(new Error(`no DevTools endpoint from ${CHROMIUM}: ${err.slice(-500)}`)), WAIT_MS);
  browser.stderr.on("data", (d) => {
    err += d;
    const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
    if (m) {
      clearTimeout(t);
      resolve(m[1]);
    }
  });
}).catch((e) => {
  console.error(e.message);
  stop(2);
  return null;
});
if (!endpoint) await new Promise(() => {});

const cdp = new WS(endpoint, { perMessageDeflate: false });
await new Promise((res, rej) => {
  cdp.once("open", res);
  cdp.once("error", rej);
});
let nextId = 1;
const pending = new Map();
cdp.on("message", (data) => {
  const msg = JSON.parse(data.toString());
  if (msg.id && pending.has(msg.id)) {
    const { resolve, reject } = pending.get(msg.id);
    pending.delete(msg.id);
    if (msg.error) reject(new Error(msg.error.message));
    else resolve(msg.result);
  }
});
function send(method, params = {}, sessionId) {
  const id = nextId++;
  cdp.send(JSON.stringify({ id, method, params, sessionId }));
  return new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
}

// A tab on `url`, with helpers to evaluate and type in it.
async function tab(url) {
  const { targetId } = await send("Target.createTarget", { url });
  const { sessionId } = await send("Target.attachToTarget", { targetId, flatten: true });
  const evaluate = async (expression) => {
    const r = await send("Runtime.evaluate", { expression, returnByValue: true }, sessionId);
    if (r.exceptionDetails) throw new Error(r.exceptionDetails.text);
    return r.result.value;
  };
  return {
    evaluate,
    // Puts the caret at the end of the textarea and types `text` as keyboard input would.
    async type(text) {
      await evaluate(`(() => { const a = document.getElementById("text"); a.focus();
        a.setSelectionRange(a.value.length, a.value.length); })()`);
      await send("Input.insertText", { text }, sessionId);
    },
    value: () => evaluate(`document.getElementById("text").value`),
  };
}

async function waitFor(what, cond) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  for (;;) {
    // Until the page has loaded, its elements are missing and evaluating throws.
    last = await cond().catch((e) => `error: ${e.message}`);
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(50);
  }
}

// ---------------------------------------------------------------- checks

let passed = 0;
let failed = 0;
async function check(name, fn) {
  try {
    const detail = await fn();
    passed += 1;
    console.log(`PASS ${name}${detail ? ` (${detail})` : ""}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err?.message ?? err}`);
  }
}

const watchdog = setTimeout(() => {
  console.log("FAIL the whole run took over 90 s");
  stop(1);
}, 90000);

const room = `textpage-${randomUUID().slice(0, 8)}`;
const url = `http://${HOST}/text?room=${room}`;
console.log(`text page check: two tabs of ${url}`);
let a, b;

await check("both tabs load the page, connect and sync", async () => {
  a = await tab(url);
  b = await tab(url);
  for (const [name, t] of [["a", a], ["b", b]]) {
    await waitFor(`tab ${name} to sync`, async () =>
      (await t.evaluate(`!document.getElementById("text").readOnly &&
        document.getElementById("status").textContent === "connected"`)) || "not synced");
  }
});

await check("each tab sees the other in its awareness count", async () => {
  for (const t of [a, b]) {
    await waitFor("2 here", async () => (await t.evaluate(`document.getElementById("people").textContent`)) === "2 here" || "not yet");
  }
});

await check("text typed in one tab appears in the other", async () => {
  await a.type("hello from a");
  await waitFor("b to show a's text", async () => (await b.value()) === "hello from a" || (await b.value()));
  await b.type(", hello from b");
  await waitFor("a to show b's text", async () => (await a.value()) === "hello from a, hello from b" || (await a.value()));
});

await check("typing in both tabs at once converges to one text", async () => {
  await Promise.all([a.type(" [A]"), b.type(" [B]")]);
  await waitFor("both tabs to agree", async () => {
    const [va, vb] = [await a.value(), await b.value()];
    return (va === vb && va.includes("[A]") && va.includes("[B]")) || [va, vb];
  });
  return JSON.stringify(await a.value());
});

await check("a third tab opened later gets the whole text", async () => {
  const c = await tab(url);
  const expected = await a.value();
  await waitFor("the new tab to show the text", async () => (await c.value()) === expected || (await c.value()));
});

clearTimeout(watchdog);
console.log(`${passed} passed, ${failed} failed`);
cdp.close();
stop(failed ? 1 : 0);
