#!/usr/bin/env node
// Checks of the class-page fixture against a running server (Partyline or `partykit dev`):
// the page built by serve.build, loaded in headless Chromium, chatting through the real
// partysocket; define, vars, .env, process.env at load; onFetch, 404.html, singlePageApp.
//
//   node check.mjs 127.0.0.1:1999

import { randomUUID } from "node:crypto";
import { launch } from "../lib/browser.mjs";
import { assert, assertEq, check, finish, hostArg, watchdog } from "../lib/checks.mjs";

const HOST = hostArg("check.mjs");
const base = `http://${HOST}`;
let browser;
watchdog(90, () => browser?.close());

await check("the page and its bundle are served", async () => {
  const page = await fetch(`${base}/`);
  assertEq(page.status, 200, "GET /");
  assert((await page.text()).includes("/dist/client.js"), "the page loads /dist/client.js");
  const js = await fetch(`${base}/dist/client.js`);
  assertEq(js.status, 200, "GET /dist/client.js");
  assert(/javascript/.test(js.headers.get("content-type") ?? ""), `content type ${js.headers.get("content-type")}`);
  const code = await js.text();
  assert(code.includes("fixture-build"), "BUILD_LABEL is defined in the page bundle");
  assert(!code.includes("declare const"), "TypeScript is compiled");
  return `${code.length} bytes`;
});

await check("onFetch answers a path that is no file", async () => {
  const res = await fetch(`${base}/api/info`);
  assertEq(res.status, 200, "GET /api/info");
  assertEq(await res.json(), { greeting: "hello from vars", path: "/api/info" }, "body");
});

await check("a path nothing answers gets 404.html with 404", async () => {
  const res = await fetch(`${base}/no/such/thing`);
  assertEq(res.status, 404, "status");
  assert((await res.text()).includes("fixture 404"), "the body is 404.html");
});

await check("define, vars (typed), .env and process.env at load reach the server", async () => {
  const res = await fetch(`${base}/parties/main/info-${randomUUID().slice(0, 6)}`);
  assertEq(res.status, 200, "status");
  const body = await res.json();
  assertEq(body.secret, "swordfish", "process.env.SECRET_WORD at load");
  assertEq(body.envSecret, "swordfish", "room.env.SECRET_WORD");
  assertEq(body.maxType, "number", "typeof room.env.MAX_MESSAGES");
  assertEq(body.label, "fixture-build", "BUILD_LABEL");
  assertEq(body.words, ["alpha", "beta", "gamma"], "a .txt import");
  assertEq(body.data, { kind: "json-module", items: [1, 2, 3] }, "a .json import");
  assertEq(body.buffer, "cGFydHlsaW5l", "Buffer");
  assertEq(body.global, true, "global");
});

browser = await launch();
const room = `page-${randomUUID().slice(0, 8)}`;
let a, b;

await check("the page runs in Chromium: connects, shows the label and its lazy chunk", async () => {
  a = await browser.open(`${base}/?room=${room}`);
  await a.waitFor("connected", `document.getElementById("status").textContent === "connected"`);
  await a.waitFor("the label", `document.getElementById("label").textContent === "fixture-build"`);
  await a.waitFor("the lazy chunk", `document.getElementById("banner").textContent === "built as fixture-build"`);
  assertEq(a.errors, [], "page errors");
});

await check("two tabs chat through the room (vars keep the last 3)", async () => {
  b = await browser.open(`${base}/?room=${room}`);
  await b.waitFor("connected", `document.getElementById("status").textContent === "connected"`);
  for (const text of ["one", "two", "three", "four"]) {
    await a.evaluate(`document.getElementById("input").value = ${JSON.stringify(text)};
      document.getElementById("form").requestSubmit(); true`);
    await a.waitFor(`"${text}" in tab a`, `[...document.querySelectorAll("#messages li")].some((li) => li.textContent.endsWith(": ${text}"))`);
  }
  const texts = `[...document.querySelectorAll("#messages li")].map((li) => li.textContent.split(": ")[1]).join(",")`;
  await b.waitFor("tab b to show the last three", `${texts} === "two,three,four"`);
  assertEq(b.errors, [], "page errors");
});

await check("a navigation to an app route gets index.html (singlePageApp)", async () => {
  const c = await browser.open(`${base}/rooms/${room}/deep/link`);
  await c.waitFor("the page", `document.title.startsWith("Fixture")`);
  const res = await fetch(`${base}/rooms/${room}/deep/link`);
  assertEq(res.status, 404, "the same path fetched (not a navigation)");
});

finish(() => browser?.close());
