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

import { randomUUID } from "node:crypto";
// Headless Chromium over the DevTools protocol (shared with the fixture projects' page checks).
import { launch } from "../partykit-projects/lib/browser.mjs";

const HOST = process.argv[2] ?? "";
const CHROMIUM = process.argv[3] ?? process.env.CHROMIUM ?? "chromium";
if (!/^[^\s/]+:\d+$/.test(HOST)) {
  console.error("usage: node textpage.mjs <host:port> [path-to-chromium]");
  process.exit(2);
}

let browser;
try {
  browser = await launch(CHROMIUM);
} catch (err) {
  console.error(err.message);
  process.exit(2);
}

function stop(code) {
  browser.close();
  setTimeout(() => process.exit(code), 400);
}

// A tab on `url`, with helpers to type in its textarea and read it.
async function tab(url) {
  const t = await browser.open(url);
  return {
    evaluate: t.evaluate,
    // Puts the caret at the end of the textarea and types `text` as keyboard input would.
    async type(text) {
      await t.evaluate(`(() => { const a = document.getElementById("text"); a.focus();
        a.setSelectionRange(a.value.length, a.value.length); })()`);
      await t.type(text);
    },
    value: () => t.evaluate(`document.getElementById("text").value`),
  };
}

async function waitFor(what, cond) {
  const deadline = Date.now() + 15000;
  let last;
  for (;;) {
    // Until the page has loaded, its elements are missing and evaluating throws.
    last = await cond().catch((e) => `error: ${e.message}`);
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 50));
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
stop(failed ? 1 : 0);
