#!/usr/bin/env node
// Checks of the yjs-editor fixture against a running server (Partyline or `partykit dev`):
// a CodeMirror 6 editor bound to a Yjs text (y-codemirror.next) whose provider is
// y-partykit/provider (BroadcastChannel off, so tabs sync through the server only), on a party
// running y-partykit's onConnect. Keyboard input goes in with CDP Input.insertText.
//
//   node check.mjs 127.0.0.1:1999

import { randomUUID } from "node:crypto";
import { launch, sleep } from "../lib/browser.mjs";
import { assert, assertEq, check, finish, hostArg, watchdog } from "../lib/checks.mjs";

const HOST = hostArg("check.mjs");
const base = `http://${HOST}`;
let browser;
watchdog(90, () => browser?.close());

await check("the page and its bundle (with one copy of Yjs) are served", async () => {
  const page = await fetch(`${base}/`);
  assertEq(page.status, 200, "GET /");
  assert((await page.text()).includes("/dist/client.js"), "the page loads /dist/client.js");
  const js = await fetch(`${base}/dist/client.js`);
  assertEq(js.status, 200, "GET /dist/client.js");
  assert(/javascript/.test(js.headers.get("content-type") ?? ""), `content type ${js.headers.get("content-type")}`);
  const code = await js.text();
  assert(!code.includes("declare const"), "TypeScript is compiled");
  assert(!/from\s*["'](yjs|codemirror|@codemirror\/[a-z]+|y-partykit[^"']*)["']/.test(code), "no bare import is left to the browser");
  const copies = code.split("Yjs was already imported").length - 1;
  assert(copies <= 1, `${copies} copies of Yjs in the bundle`);
  return `${code.length} bytes`;
});

browser = await launch();
const room = `doc-${randomUUID().slice(0, 8)}`;
const url = (name) => `${base}/?room=${room}&name=${name}`;
// The editor's document, and what its DOM shows (remote carets and their name labels left out).
const docText = `window.editor?.state.doc.toString()`;
const shown = `(() => {
  const lines = [...document.querySelectorAll(".cm-content .cm-line")].map((line) => {
    const copy = line.cloneNode(true);
    copy.querySelectorAll(".cm-ySelectionCaret, .cm-ySelectionInfo, .cm-widgetBuffer").forEach((e) => e.remove());
    return copy.textContent;
  });
  return lines.join("\\n");
})()`;
const ready = `document.getElementById("status").textContent === "synced" && document.querySelector(".cm-content") !== null`;
const toEnd = `(() => { const v = window.editor; v.focus(); v.dispatch({ selection: { anchor: v.state.doc.length } }); return document.activeElement === v.contentDOM; })()`;
let a, b, c;

await check("two tabs load the editor and sync with the room", async () => {
  a = await browser.open(url("ada"));
  b = await browser.open(url("bob"));
  await a.waitFor("tab a synced", ready);
  await b.waitFor("tab b synced", ready);
  assertEq([await a.evaluate(docText), await b.evaluate(docText)], ["", ""], "empty documents");
  assertEq([a.errors, b.errors], [[], []], "page errors");
});

await check("text typed in one tab's editor shows in the other's", async () => {
  assertEq(await a.evaluate(toEnd), true, "tab a's editor has the focus");
  await a.type("Hello from Ada.");
  await a.waitFor("the text in tab a's editor", `${docText} === "Hello from Ada."`);
  await b.waitFor("the text in tab b's editor", `${docText} === "Hello from Ada."`);
  await b.waitFor("the text on tab b's screen", `${shown} === "Hello from Ada."`);
});

await check("each tab sees the other's cursor (awareness)", async () => {
  await a.waitFor("bob in tab a", `document.getElementById("peers").textContent === "bob"`);
  await b.waitFor("ada in tab b", `document.getElementById("peers").textContent === "ada"`);
  await b.waitFor("ada's caret in tab b", `[...document.querySelectorAll(".cm-ySelectionInfo")].some((e) => e.textContent === "ada")`);
});

const pieces = { a: [], b: [] };
await check("typing in both tabs at once converges", async () => {
  assertEq(await b.evaluate(toEnd), true, "tab b's editor has the focus");
  await a.evaluate(toEnd);
  for (let i = 1; i <= 6; i++) {
    const pa = ` [a${i}]`;
    const pb = ` [b${i}]`;
    pieces.a.push(pa);
    pieces.b.push(pb);
    await Promise.all([a.type(pa), b.type(pb)]);
    await sleep(i % 2 ? 0 : 30);
  }
  const all = [...pieces.a, ...pieces.b];
  const hasAll = `(() => { const t = ${docText}; return ${JSON.stringify(all)}.every((p) => t.includes(p)); })()`;
  await a.waitFor("every piece in tab a", hasAll);
  await b.waitFor("every piece in tab b", hasAll);
  let ta, tb;
  for (let i = 0; i < 100; i++) {
    [ta, tb] = [await a.evaluate(docText), await b.evaluate(docText)];
    if (ta === tb) break;
    await sleep(50);
  }
  assertEq(ta, tb, "the two documents");
  assert(ta.startsWith("Hello from Ada."), `the first text is kept: ${JSON.stringify(ta)}`);
  // Each tab's own pieces stay in its order.
  for (const [who, list] of Object.entries(pieces)) {
    const at = list.map((p) => ta.indexOf(p));
    assert(at.every((x, i) => i === 0 || x > at[i - 1]), `${who}'s pieces in order: ${JSON.stringify(ta)}`);
  }
  assertEq(await b.evaluate(shown), ta, "what tab b shows");
  assertEq(ta.length, "Hello from Ada.".length + all.join("").length, "the length");
  return JSON.stringify(ta);
});

await check("a tab opened later gets the whole text; the server holds it", async () => {
  const expected = await a.evaluate(docText);
  c = await browser.open(url("cy"));
  await c.waitFor("tab c synced", ready);
  await c.waitFor("the whole text in tab c", `${docText} === ${JSON.stringify(expected)}`);
  await c.waitFor("the whole text on tab c's screen", `${shown} === ${JSON.stringify(expected)}`);
  const res = await fetch(`${base}/parties/main/${room}`);
  assertEq(res.status, 200, "GET /parties/main/<room>");
  assertEq(await res.json(), { text: expected }, "the server's document");
  // And an edit from the newcomer reaches the others.
  assertEq(await c.evaluate(toEnd), true, "tab c's editor has the focus");
  await c.type("\nBye from Cy.");
  await a.waitFor("tab c's line in tab a", `${docText} === ${JSON.stringify(`${expected}\nBye from Cy.`)}`);
  await b.waitFor("tab c's line on tab b's screen", `${shown} === ${JSON.stringify(`${expected}\nBye from Cy.`)}`);
  assertEq([a.errors, b.errors, c.errors], [[], [], []], "page errors");
});

await check("edits made while a tab is offline merge when it reconnects", async () => {
  await b.evaluate(`window.provider.disconnect(); true`);
  await b.waitFor("tab b offline", `window.provider.wsconnected === false`);
  assertEq(await b.evaluate(toEnd), true, "tab b's editor has the focus");
  await b.type(" (offline b)");
  assertEq(await a.evaluate(toEnd), true, "tab a's editor has the focus");
  await a.type(" (online a)");
  await sleep(300);
  assert(!(await a.evaluate(`${docText}.includes("(offline b)")`)), "tab b's offline edit stays in tab b");
  await b.evaluate(`window.provider.connect(); true`);
  const both = `(() => { const t = ${docText}; return t.includes(" (offline b)") && t.includes(" (online a)"); })()`;
  await a.waitFor("both edits in tab a", both);
  await b.waitFor("both edits in tab b", both);
  await b.waitFor("the same text in both tabs", `${docText} === ${JSON.stringify(await a.evaluate(docText))}`);
  assertEq([a.errors, b.errors], [[], []], "page errors");
});

await check("the document outlives its editors: a tab opened after all left loads it", async () => {
  const expected = await a.evaluate(docText);
  for (const tab of [a, b, c]) await tab.evaluate(`location.href = "about:blank"; true`);
  await sleep(1000);
  const e = await browser.open(url("eve"));
  await e.waitFor("tab e synced", ready);
  await e.waitFor("the whole text in tab e", `${docText} === ${JSON.stringify(expected)}`);
  assertEq(e.errors, [], "page errors");
});

await check("another room is another document", async () => {
  const d = await browser.open(`${base}/?room=${room}-other&name=dee`);
  await d.waitFor("tab d synced", ready);
  assertEq(await d.evaluate(docText), "", "its text");
});

finish(() => browser?.close());
