#!/usr/bin/env node
// The operator console (a gateway's /console/) driven in headless Chromium over the DevTools
// protocol, against a running cluster: the page with Basic auth, every node ready, the shard
// map, the charts, no horizontal scroll at 380 px; a room lookup; a node SIGKILLed (the page
// follows by itself: the node gone, its shards on the others); a drain clicked (confirmed) and
// followed to the end, with the operator's name in the events.
//
//   CONSOLE_URL=http://127.0.0.1:9100/console/ CONSOLE_USER=alice CONSOLE_TOKEN=... \
//   ROOM=main/some-room CONN_ID=... KILL_PID=1234 KILL_NODE=node-3 DRAIN_NODE=node-2 \
//   NODES=node-1,node-2,node-3 node check.mjs
//
// WAIT_MS (default 60000) bounds the failover and the drain; CHROMIUM picks the browser.
// Prints PASS/FAIL per step and ` N passed, M failed`; stops at the first failing step; exits 0
// when every step passed, 1 otherwise; closes the browser in every case.

import { launch, sleep } from "../partykit-projects/lib/browser.mjs";

const SHARDS = 4096;
const WAIT_MS = Number(process.env.WAIT_MS || 60000);
const SHORT_MS = Math.min(WAIT_MS, 20000);

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`check.mjs: ${name} is not set (needs CONSOLE_URL CONSOLE_USER CONSOLE_TOKEN ROOM CONN_ID KILL_PID KILL_NODE DRAIN_NODE NODES)`);
    process.exit(2);
  }
  return v;
}

const CONSOLE_URL = new URL(need("CONSOLE_URL")).href;
const USER = need("CONSOLE_USER");
const TOKEN = need("CONSOLE_TOKEN");
const ROOM = need("ROOM");
const CONN_ID = need("CONN_ID");
const KILL_PID = Number(need("KILL_PID"));
const KILL_NODE = need("KILL_NODE");
const DRAIN_NODE = need("DRAIN_NODE");
const NODES = need("NODES").split(",").map((s) => s.trim()).filter(Boolean);
const slash = ROOM.indexOf("/");
if (slash <= 0) {
  console.error(`check.mjs: ROOM must be party/room, not ${JSON.stringify(ROOM)}`);
  process.exit(2);
}
const PARTY = ROOM.slice(0, slash);
const ROOM_NAME = ROOM.slice(slash + 1);
for (const id of [KILL_NODE, DRAIN_NODE]) {
  if (!NODES.includes(id)) {
    console.error(`check.mjs: ${id} is not one of NODES (${NODES.join(",")})`);
    process.exit(2);
  }
}
const AUTH = `Basic ${Buffer.from(`${USER}:${TOKEN}`).toString("base64")}`;
const J = JSON.stringify;

let browser = null;
let tab = null;
let passed = 0;
let failed = 0;

function closeBrowser() {
  try {
    browser?.close();
  } catch {
    // already gone
  }
  browser = null;
}

function end(code) {
  console.log(`${passed} passed, ${failed} failed`);
  closeBrowser();
  setTimeout(() => process.exit(code), 400);
}

// The whole run is bounded: the two long waits, the short ones, the browser's start.
const watchdogS = Math.ceil((3 * WAIT_MS + 10 * SHORT_MS) / 1000) + 30;
console.log(`console check of ${CONSOLE_URL} as ${USER}: nodes ${NODES.join(",")}, kill ${KILL_NODE} (pid ${KILL_PID}), drain ${DRAIN_NODE}, room ${ROOM}; WAIT_MS ${WAIT_MS}, the whole run at most ${watchdogS} s`);
setTimeout(() => {
  console.log(`FAIL the whole run took over ${watchdogS} s`);
  failed += 1;
  end(1);
}, watchdogS * 1000).unref();
for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    closeBrowser();
    process.exit(1);
  });
}

/** Runs step `n`; on failure prints why and ends the run (the later steps need this one). */
async function step(n, name, fn) {
  const t0 = Date.now();
  try {
    const detail = await fn();
    passed += 1;
    console.log(`PASS ${n}. ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)${detail ? `: ${detail}` : ""}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${n}. ${name}: ${err?.message ?? err}`);
    if (tab) {
      const errors = tab.errors.length ? ` page errors: ${J(tab.errors)}` : "";
      const state = await tab.evaluate(pageState).catch(() => "?");
      console.log(`     the page at the failure: ${J(state)}${errors}`);
    }
    end(1);
    await new Promise(() => {}); // end() exits
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

/** What the page shows, for failure messages. */
const pageState = `(() => ({
  status: document.getElementById("status")?.textContent,
  nodes: [...document.querySelectorAll("#nodes tr[data-node]")].map((tr) => tr.dataset.node + ":" + tr.dataset.state + ":" + tr.dataset.shards),
  owners: document.getElementById("shardmap")?.dataset.owners,
  unleased: document.getElementById("shardmap")?.dataset.unleased,
  message: document.getElementById("action-message")?.hidden ? null : document.getElementById("action-message")?.textContent,
  events: [...document.querySelectorAll("#events li[data-kind]")].slice(0, 5)
    .map((li) => [...li.children].map((c) => c.textContent.trim()).filter(Boolean).join(" ").slice(0, 160)),
}))()`;

const ownersExpr = `JSON.parse(document.getElementById("shardmap").dataset.owners || "{}")`;
const rowExpr = (id) => `document.querySelector(${J(`#nodes tr[data-node="${CSS_escape(id)}"]`)})`;

/** CSS.escape for an attribute value in double quotes. */
function CSS_escape(s) {
  return String(s).replace(/["\\]/g, "\\$&");
}

async function get(path, auth) {
  const res = await fetch(new URL(path, CONSOLE_URL), { headers: auth ? { Authorization: AUTH } : {} });
  const body = await res.text();
  return { status: res.status, type: res.headers.get("content-type") ?? "", headers: res.headers, body };
}

// ---------------------------------------------------------------------------------------------

await step(1, "the console loads with Basic auth: every node ready, the shard map whole, the charts, no errors, no horizontal scroll at 380 px", async () => {
  const anon = await get("", false);
  assert(anon.status === 401, `GET ${CONSOLE_URL} without credentials: expected 401, got ${anon.status}`);
  assert(/^basic/i.test(anon.headers.get("www-authenticate") ?? ""), `the 401 must carry WWW-Authenticate: Basic (got ${J(anon.headers.get("www-authenticate"))})`);
  const bad = await fetch(CONSOLE_URL, { headers: { Authorization: `Basic ${Buffer.from(`${USER}:not-the-token`).toString("base64")}` } });
  assert(bad.status === 401, `a wrong token: expected 401, got ${bad.status}`);
  const wants = [
    ["", /^text\/html/],
    ["assets/console.js", /javascript/],
    ["assets/console.css", /^text\/css/],
    ["assets/vendor/uplot/uPlot.iife.min.js", /javascript/],
    ["assets/vendor/uplot/uPlot.min.css", /^text\/css/],
    ["api/overview", /^application\/json/],
  ];
  for (const [path, type] of wants) {
    const r = await get(path, true);
    const hint = r.status === 401 ? " (are CONSOLE_USER and CONSOLE_TOKEN right?)" : "";
    assert(r.status === 200, `GET ${path || "/console/"} with credentials: expected 200, got ${r.status}${hint} ${r.body.slice(0, 200)}`);
    assert(type.test(r.type), `GET ${path || "/console/"}: content type ${J(r.type)} does not match ${type}`);
  }

  browser = await launch();
  tab = await browser.open(CONSOLE_URL, { headers: { Authorization: AUTH }, dialogs: "accept", viewport: { width: 1280, height: 900 } });
  await tab.waitFor("the page", `document.title.startsWith("Partyline console") && !!document.getElementById("nodes")`, SHORT_MS);
  for (const id of NODES) {
    await tab.waitFor(`${id} ready in #nodes`, `${rowExpr(id)}?.dataset.state === "ready"`, SHORT_MS);
  }
  await tab.waitFor("the stream (#status data-live=true)", `document.getElementById("status").dataset.live === "true"`, SHORT_MS);
  await tab.waitFor(
    "the shard map to add up to 4096",
    `(() => { const c = document.getElementById("shardmap"); const o = ${ownersExpr};
      return Object.values(o).reduce((a, b) => a + b, 0) + Number(c.dataset.unleased) === ${SHARDS}; })()`,
    SHORT_MS,
  );
  const owners = await tab.evaluate(ownersExpr);
  for (const id of Object.keys(owners)) assert(NODES.includes(id), `the shard map names an owner ${id} that is not one of NODES`);
  await tab.waitFor("at least 4 charts", `document.querySelectorAll("#charts .chart").length >= 4 && document.querySelectorAll("#charts .chart canvas").length >= 4`, SHORT_MS);
  const charts = await tab.evaluate(`document.querySelectorAll("#charts .chart").length`);
  // A few snapshots, so the charts have points and the CPU column a value.
  await sleep(2500);
  assert(tab.errors.length === 0, `page errors: ${J(tab.errors)}`);

  await tab.setViewport({ width: 380, height: 800, mobile: true, deviceScaleFactor: 2 });
  await sleep(800);
  const narrow = await tab.evaluate(`(() => ({ width: document.documentElement.scrollWidth, inner: window.innerWidth,
    wide: [...document.querySelectorAll("body *")].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1).slice(0, 5).map((e) => e.tagName + (e.id ? "#" + e.id : "") + "." + e.className) }))()`);
  assert(narrow.inner <= 381, `the viewport emulation did not take: innerWidth ${narrow.inner}`);
  assert(narrow.width <= 381, `horizontal scroll at 380 px: scrollWidth ${narrow.width}; too wide: ${J(narrow.wide)}`);
  await tab.clearViewport();
  await tab.setViewport({ width: 1280, height: 900 });
  await sleep(300);
  assert(tab.errors.length === 0, `page errors: ${J(tab.errors)}`);
  return `nodes ${NODES.join(", ")} ready; shards ${J(owners)}; ${charts} charts; scrollWidth ${narrow.width} at 380 px`;
});

await step(2, `the room lookup finds ${ROOM} with its connection ${CONN_ID}`, async () => {
  await tab.evaluate(`(() => {
    document.getElementById("room-party").value = ${J(PARTY)};
    document.getElementById("room-name").value = ${J(ROOM_NAME)};
    return true; })()`);
  await tab.click(`#room-form button[type="submit"]`);
  const found = `(() => { const r = document.getElementById("room-result");
    return !r.hidden && ${J(NODES)}.includes(r.dataset.owner)
      && !!r.querySelector(${J(`li[data-conn="${CSS_escape(CONN_ID)}"]`)}); })()`;
  await tab.waitFor(`#room-result with an owner among NODES and li[data-conn="${CONN_ID}"]`, found, SHORT_MS);
  const owner = await tab.evaluate(`document.getElementById("room-result").dataset.owner`);
  const hash = await tab.evaluate(`location.hash`);
  const want = `#room=${encodeURIComponent(PARTY)}/${encodeURIComponent(ROOM_NAME)}`;
  assert(hash === want, `the lookup should be deep-linkable: location.hash ${J(hash)}, expected ${J(want)}`);

  // The deep link, in a second tab, fills the form and runs the lookup.
  const deep = await browser.open(`${CONSOLE_URL}${want}`, { headers: { Authorization: AUTH } });
  try {
    await deep.waitFor(`the deep link ${want} to show the room`, found, SHORT_MS);
    const form = await deep.evaluate(`document.getElementById("room-party").value + "/" + document.getElementById("room-name").value`);
    assert(form === ROOM, `the deep link should fill the form with ${ROOM}, not ${form}`);
    assert(deep.errors.length === 0, `page errors in the deep-linked tab: ${J(deep.errors)}`);
  } finally {
    await deep.close();
  }
  assert(tab.errors.length === 0, `page errors: ${J(tab.errors)}`);
  return `owner ${owner}, ${CONN_ID} listed, deep link ${want} works`;
});

await step(3, `${KILL_NODE} SIGKILLed (pid ${KILL_PID}): the page shows it gone and its shards on the other nodes, by itself`, async () => {
  await tab.evaluate(`window.__consoleCheckNoReload = true`);
  const before = await tab.evaluate(`(() => ({ owners: ${ownersExpr},
    unleased: Number(document.getElementById("shardmap").dataset.unleased),
    moves: Number(document.getElementById("shardmap").dataset.moves) }))()`);
  const had = before.owners[KILL_NODE] ?? 0;
  const leasedBefore = SHARDS - before.unleased;
  try {
    process.kill(KILL_PID, "SIGKILL");
  } catch (e) {
    throw new Error(`cannot SIGKILL pid ${KILL_PID}: ${e.message}`);
  }
  const t0 = Date.now();
  await tab.waitFor(
    `${KILL_NODE}'s row to go (or show state gone) and its shards to move to the others (it had ${had})`,
    `(() => { const row = ${rowExpr(KILL_NODE)}; const o = ${ownersExpr};
      const others = Object.entries(o).filter(([k]) => k !== ${J(KILL_NODE)}).reduce((a, [, v]) => a + v, 0);
      return (!row || row.dataset.state === "gone") && !(o[${J(KILL_NODE)}] > 0) && others >= ${leasedBefore}; })()`,
    WAIT_MS,
  );
  const took = ((Date.now() - t0) / 1000).toFixed(1);
  assert(await tab.evaluate(`window.__consoleCheckNoReload === true`), "the page reloaded (it must follow by itself)");
  const after = await tab.evaluate(`(() => ({ owners: ${ownersExpr},
    row: ${rowExpr(KILL_NODE)}?.dataset.state ?? "no row",
    moves: Number(document.getElementById("shardmap").dataset.moves) }))()`);
  if (had > 0) assert(after.moves > before.moves, `the shard map saw no owner change (data-moves ${before.moves} -> ${after.moves})`);
  for (const id of NODES.filter((n) => n !== KILL_NODE)) {
    const state = await tab.evaluate(`${rowExpr(id)}?.dataset.state`);
    assert(state === "ready", `${id} should still be ready, shows ${state}`);
  }
  assert(tab.errors.length === 0, `page errors: ${J(tab.errors)}`);
  return `after ${took} s: ${KILL_NODE} ${after.row}, shards ${J(after.owners)}, ${after.moves - before.moves} owner changes seen`;
});

await step(4, `drain ${DRAIN_NODE} from its button (confirmed): drained with 0 shards, an event naming ${USER}`, async () => {
  const button = `button[data-drain="${CSS_escape(DRAIN_NODE)}"]`;
  await tab.waitFor(`${button} enabled`, `(() => { const b = document.querySelector(${J(button)}); return !!b && !b.disabled; })()`, SHORT_MS);
  const dialogsBefore = tab.dialogs.length;
  await tab.click(button);
  const t0 = Date.now();
  for (;;) {
    if (tab.dialogs.length > dialogsBefore) break;
    if (Date.now() - t0 > SHORT_MS) throw new Error("clicking Drain asked no confirmation");
    await sleep(50);
  }
  const dialog = tab.dialogs[tab.dialogs.length - 1];
  assert(dialog.type === "confirm", `the dialog should be a confirm, was ${dialog.type}`);
  assert(dialog.message.includes(DRAIN_NODE), `the confirmation should name ${DRAIN_NODE}: ${J(dialog.message)}`);
  await tab.waitFor("the drain's answer", `document.getElementById("action-message").dataset.ok === "true"`, WAIT_MS).catch(async (e) => {
    const msg = await tab.evaluate(`document.getElementById("action-message").textContent`).catch(() => "?");
    throw new Error(`${e.message.split(" (last")[0]}; the page shows ${J(msg)}`);
  });
  const answer = await tab.evaluate(`document.getElementById("action-message").querySelector(".text").textContent`);
  let sawDraining = false;
  const watch = setInterval(async () => {
    const s = await tab.evaluate(`${rowExpr(DRAIN_NODE)}?.dataset.state`).catch(() => null);
    if (s === "draining") sawDraining = true;
  }, 200);
  try {
    await tab.waitFor(
      `${DRAIN_NODE} drained with 0 shards`,
      `(() => { const row = ${rowExpr(DRAIN_NODE)}; const o = ${ownersExpr};
        return !!row && row.dataset.state === "drained" && row.dataset.shards === "0" && !(o[${J(DRAIN_NODE)}] > 0); })()`,
      WAIT_MS,
    );
  } finally {
    clearInterval(watch);
  }
  const took = ((Date.now() - t0) / 1000).toFixed(1);
  assert(await tab.evaluate(`document.querySelector(${J(button)}).disabled`), `the Drain button of a drained ${DRAIN_NODE} should be disabled`);
  await tab.waitFor(
    `an event of kind drain or action naming ${USER} in #events`,
    `[...document.querySelectorAll("#events li[data-kind]")].some((li) =>
      (li.dataset.kind === "drain" || li.dataset.kind === "action") && li.textContent.includes(${J(USER)}))`,
    SHORT_MS,
  );
  const ev = await tab.evaluate(`[...[...document.querySelectorAll("#events li[data-kind]")].find((li) =>
      (li.dataset.kind === "drain" || li.dataset.kind === "action") && li.textContent.includes(${J(USER)}))
      .children].map((c) => c.textContent.trim()).filter(Boolean).join(" ")`);
  assert(await tab.evaluate(`window.__consoleCheckNoReload === true`), "the page reloaded");
  assert(tab.errors.length === 0, `page errors: ${J(tab.errors)}`);
  return `answer ${J(answer)}; drained after ${took} s${sawDraining ? " (draining seen)" : ""}; event ${J(ev.replace(/\s+/g, " ").trim())}`;
});

end(0);
