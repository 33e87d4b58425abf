#!/usr/bin/env node
// Checks of the react-page fixture against a running server (Partyline or `partykit dev`):
// a React 19 page (JSX through the automatic runtime, react-dom/client createRoot,
// usePartySocket from partysocket/react) built by serve.build, on a storage-backed class
// party: it renders in headless Chromium, connects, and a click in one tab updates the count
// in the others.
//
//   node check.mjs 127.0.0.1:1999

import { randomUUID } from "node:crypto";
import { launch } from "../lib/browser.mjs";
import { assert, assertEq, check, finish, hostArg, watchdog } from "../lib/checks.mjs";

const HOST = hostArg("check.mjs");
const base = `http://${HOST}`;
let browser;
watchdog(90, () => browser?.close());

await check("the page and its React bundle are served", async () => {
  const page = await fetch(`${base}/`);
  assertEq(page.status, 200, "GET /");
  assert((await page.text()).includes("/dist/client.js"), "the page loads /dist/client.js");
  const js = await fetch(`${base}/dist/client.js`);
  assertEq(js.status, 200, "GET /dist/client.js");
  assert(/javascript/.test(js.headers.get("content-type") ?? ""), `content type ${js.headers.get("content-type")}`);
  const code = await js.text();
  assert(!/<main>|<\/button>/.test(code), "JSX is compiled");
  assert(!code.includes("declare const"), "TypeScript is compiled");
  // React itself is in the bundle (or a chunk it imports), not left as a bare import.
  assert(!/from\s*["']react(-dom)?(\/[a-z-]+)?["']/.test(code), "no bare import of react is left to the browser");
  return `${code.length} bytes`;
});

browser = await launch();
const room = `react-${randomUUID().slice(0, 8)}`;
const url = `${base}/?room=${room}`;
const count = `document.getElementById("count")?.textContent`;
const connected = `document.getElementById("status")?.textContent === "connected"`;
let a, b;

await check("React renders the page in Chromium and it connects", async () => {
  a = await browser.open(url);
  await a.waitFor("the React tree", `document.querySelector("#root main h1") !== null`);
  await a.waitFor("connected", connected);
  await a.waitFor("the count from the party", `${count} === "0"`);
  assertEq(await a.evaluate(`document.getElementById("room").textContent`), room, "the room shown");
  assertEq(await a.evaluate(`document.getElementById("add").disabled`), false, "the button is enabled");
  assertEq(a.errors, [], "page errors");
});

await check("a click in one tab updates the count in another", async () => {
  b = await browser.open(url);
  await b.waitFor("connected", connected);
  await b.waitFor("the count", `${count} === "0"`);
  await a.evaluate(`document.getElementById("add").click(); true`);
  await a.waitFor("1 in tab a", `${count} === "1"`);
  await b.waitFor("1 in tab b", `${count} === "1"`);
  await b.evaluate(`document.getElementById("add5").click(); true`);
  await a.waitFor("6 in tab a", `${count} === "6"`);
  await b.waitFor("6 in tab b", `${count} === "6"`);
  const bId = await b.evaluate(`document.getElementById("me").textContent`);
  await a.waitFor("tab b named as the last to click", `document.getElementById("last")?.textContent === ${JSON.stringify(bId)}`);
  assertEq([a.errors, b.errors], [[], []], "page errors");
});

await check("clicks from both tabs at once all count", async () => {
  await Promise.all([
    a.evaluate(`for (let i = 0; i < 5; i++) document.getElementById("add").click(); true`),
    b.evaluate(`for (let i = 0; i < 5; i++) document.getElementById("add").click(); true`),
  ]);
  await a.waitFor("16 in tab a", `${count} === "16"`);
  await b.waitFor("16 in tab b", `${count} === "16"`);
});

await check("the count is kept in room storage: a new tab and an HTTP request see it", async () => {
  const c = await browser.open(url);
  await c.waitFor("16 in a new tab", `${count} === "16"`);
  const res = await fetch(`${base}/parties/main/${room}`);
  assertEq(res.status, 200, "GET /parties/main/<room>");
  assertEq(await res.json(), { count: 16 }, "body");
  assertEq(c.errors, [], "page errors");
});

await check("another room has its own count", async () => {
  const d = await browser.open(`${base}/?room=${room}-other`);
  await d.waitFor("0 in another room", `${count} === "0"`);
});

finish(() => browser?.close());
