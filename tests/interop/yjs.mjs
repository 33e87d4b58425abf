#!/usr/bin/env node
// Interop checks: the real npm `yjs` + `y-partykit` provider (YPartyKitProvider, on `ws`)
// against running Partyline servers. This script does NOT start a server.
//
//   node tests/interop/yjs.mjs check <host:port> [<host:port>] [--auth]
//       the live checks; providers alternate between the two hosts (two gateways of a
//       cluster), or all use the one host. --auth adds a check of the `yjs-auth` party that
//       only the test harness registers (tests/src/parties.rs)
//   node tests/interop/yjs.mjs write <host:port> <room>
//       writes a known document (text, map, 2 MB text) to room <room> of party `yjs`
//   node tests/interop/yjs.mjs read <host:port> <room>
//       checks that a fresh provider gets exactly that document (run after a restart)
//
// Prints one line per check, then `N passed, N failed`; exits 1 if any check failed, 2 on bad
// usage or missing dependencies. Every provider uses `disableBc: true`, so documents only ever
// meet through the server.

import { randomUUID } from "node:crypto";

let Y, YPartyKitProvider, WS;
try {
  Y = await import("yjs");
  ({ default: YPartyKitProvider } = await import("y-partykit/provider"));
  ({ default: WS } = await import("ws"));
} catch (err) {
  console.error(`cannot load yjs/y-partykit/ws (${err.message}); run \`npm ci\` in tests/interop first`);
  process.exit(2);
}

const AUTH = process.argv.includes("--auth");
const [MODE, ...ARGS] = process.argv.slice(2).filter((a) => a !== "--auth");
const hostOk = (h) => /^[^\s/]+:\d+$/.test(h ?? "");
const usage = () => {
  console.error("usage: node yjs.mjs check <host:port> [<host:port>] [--auth] | write <host:port> <room> | read <host:port> <room>");
  process.exit(2);
};
if (MODE === "check" ? !hostOk(ARGS[0]) || (ARGS[1] && !hostOk(ARGS[1])) : !["write", "read"].includes(MODE) || !hostOk(ARGS[0]) || !ARGS[1]) {
  usage();
}
const HOSTS = MODE === "check" ? [ARGS[0], ARGS[1] ?? ARGS[0]] : [ARGS[0]];

const WAIT_MS = 15000; // any single wait
const CHECK_MS = 45000; // any single check
const TOTAL_MS = 170000; // the whole run
const BIG = 2_000_000; // characters of the large text (one char = one byte in the update)

// ---------------------------------------------------------------- plumbing

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rand = () => randomUUID().slice(0, 8);
const roomName = (tag) => `interop-yjs-${tag}-${rand()}`;
function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}
async function waitUntil(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

// Every raw socket, with the sizes of the binary frames it received, so checks can see that a
// large update arrived as one frame.
const allRaw = new Set();
class TrackedWS extends WS {
  constructor(...args) {
    super(...args);
    this.received = [];
    allRaw.add(this);
    this.on("error", () => {});
    this.on("message", (data, isBinary) => {
      if (isBinary) this.received.push(data.byteLength ?? data.length);
    });
  }
}

let providers = []; // of the running check, destroyed when it ends

// A provider on HOSTS[i % 2] in party `party` (default `yjs`), with its own document.
function provider(i, room, opts = {}) {
  const doc = new Y.Doc();
  const p = new YPartyKitProvider(HOSTS[i % HOSTS.length], room, doc, {
    party: "yjs",
    WebSocketPolyfill: TrackedWS,
    disableBc: true,
    maxBackoffTime: 500,
    ...opts,
  });
  p.closes = [];
  p.on("connection-close", (event) => p.closes.push(event?.code));
  providers.push(p);
  return p;
}
const synced = (p, what = "the provider to sync") => waitUntil(() => p.synced, what);
const text = (p, name = "t") => p.doc.getText(name).toString();
// A Y.Map's JSON with keys sorted (entry order differs between replicas).
const canonical = (map) => JSON.stringify(Object.entries(map.toJSON()).sort(([x], [y]) => (x < y ? -1 : 1)));
const bigFrames = (p) => (p.ws?.received ?? []).filter((n) => n >= BIG);

// The provider stops reconnecting, then its socket closes cleanly (no awareness removal of its
// own, unlike destroy()) or is dropped without a Close frame.
function closeQuietly(p) {
  p.shouldConnect = false;
  p.ws?.close();
}
function drop(p) {
  p.shouldConnect = false;
  p.ws?._socket?.destroy();
}
async function closedAll(ps) {
  await waitUntil(() => ps.every((p) => p.ws === null && ![...allRaw].some((w) => w.readyState === WS.CLOSING)), "sockets to close");
}

// ---------------------------------------------------------------- the document of write/read

function writeKnown(doc) {
  doc.transact(() => {
    doc.getText("t").insert(0, "persisted text ✓");
    doc.getMap("m").set("answer", 42);
    doc.getMap("m").set("nested", { list: [1, 2, 3] });
    doc.getText("big").insert(0, "b".repeat(BIG));
  });
}
function checkKnown(p) {
  expect(text(p) === "persisted text ✓", `text: got ${JSON.stringify(text(p).slice(0, 40))}`);
  const m = canonical(p.doc.getMap("m"));
  expect(m === '[["answer",42],["nested",{"list":[1,2,3]}]]', `map: got ${m}`);
  expect(text(p, "big").length === BIG, `big text: got ${text(p, "big").length} chars`);
}

// ---------------------------------------------------------------- checks

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

if (MODE === "check") {
  const shared = roomName("shared"); // the document that several checks build up

  check("a. two providers sync and converge on concurrent Y.Text and Y.Map edits", async () => {
    const [a, b] = [provider(0, shared), provider(1, shared)];
    await synced(a);
    await synced(b);
    // Concurrent: both edit before seeing the other's edit.
    a.doc.transact(() => {
      a.doc.getText("t").insert(0, "alpha ");
      a.doc.getMap("m").set("a", 1);
      a.doc.getMap("m").set("both", "from a");
    });
    b.doc.transact(() => {
      b.doc.getText("t").insert(0, "beta ");
      b.doc.getMap("m").set("b", 2);
      b.doc.getMap("m").set("both", "from b");
    });
    const same = () => text(a) === text(b) && canonical(a.doc.getMap("m")) === canonical(b.doc.getMap("m"));
    const state = () => JSON.stringify([text(a), a.doc.getMap("m").toJSON(), text(b), b.doc.getMap("m").toJSON()]);
    await waitUntil(() => same() && text(a).length === 11 && a.doc.getMap("m").size === 3, "the documents to converge")
      .catch((e) => {
        throw new Error(`${e.message}: a and b have ${state()}`);
      });
    expect(text(a).includes("alpha ") && text(a).includes("beta "), `text: ${text(a)}`);
    const both = a.doc.getMap("m").get("both");
    expect(both === "from a" || both === "from b", `map: ${both}`);
    return `text ${JSON.stringify(text(a))}, both = ${JSON.stringify(both)}`;
  });

  check("b. awareness appears at the other provider and comes back to the sender", async () => {
    const [a, b] = [provider(0, shared), provider(1, shared)];
    await synced(a);
    await synced(b);
    const before = a.ws.received.length;
    a.awareness.setLocalStateField("user", { name: "a" });
    await waitUntil(() => b.awareness.getStates().get(a.doc.clientID)?.user?.name === "a", "a's state at b");
    // The server relays to the sender too: that echo keeps a lone provider's socket alive.
    await waitUntil(() => a.ws.received.length > before, "a's own awareness update back at a");
  });

  const leaving = async (how) => {
    const [stay, leave] = [provider(0, shared), provider(1, shared)];
    await synced(stay);
    await synced(leave);
    leave.awareness.setLocalStateField("user", { name: how });
    const id = leave.doc.clientID;
    await waitUntil(() => stay.awareness.getStates().has(id), "the leaving provider's state to appear");
    if (how === "close") closeQuietly(leave);
    else if (how === "drop") drop(leave);
    else leave.destroy();
    await waitUntil(() => !stay.awareness.getStates().has(id), `its state to disappear after ${how}`);
  };
  check("c. awareness disappears when a provider's socket closes (removed by the server)", () => leaving("close"));
  check("d. awareness disappears when a provider's socket drops without a Close (removed by the server)", () =>
    leaving("drop"));
  check("e. awareness disappears on provider.destroy()", () => leaving("destroy"));

  check("f. a 2 MB update (chunked by the provider) reaches the other provider as one frame", async () => {
    const [a, b] = [provider(0, shared), provider(1, shared)];
    await synced(a);
    await synced(b);
    const t0 = Date.now();
    a.doc.getText("big").insert(0, "x".repeat(BIG));
    await waitUntil(() => text(b, "big").length === BIG, "the 2 MB text at b", 30000);
    const ms = Date.now() - t0;
    const frames = bigFrames(b);
    expect(frames.length === 1, `b got ${frames.length} frames of >= 2 MB: ${frames}`);
    await waitUntil(() => bigFrames(a).length === 1, "the sender to get its 2 MB update back");
    return `${ms} ms, one frame of ${frames[0]} bytes`;
  });

  check("g. a fresh provider gets the 2 MB document in one SyncStep2", async () => {
    const c = provider(1, shared);
    const t0 = Date.now();
    await waitUntil(() => c.synced, "the fresh provider to sync", 30000);
    const ms = Date.now() - t0;
    expect(text(c, "big").length === BIG, `big text: ${text(c, "big").length}`);
    const frames = bigFrames(c);
    expect(frames.length === 1, `${frames.length} frames of >= 2 MB: ${frames}`);
    return `${ms} ms, one frame of ${frames[0]} bytes`;
  });

  check("h. after everyone left, a new provider gets the whole document", async () => {
    const a = provider(0, shared);
    await synced(a);
    const expected = { t: text(a), m: canonical(a.doc.getMap("m")), big: text(a, "big").length };
    a.destroy();
    await closedAll([a]);
    const b = provider(1, shared);
    await waitUntil(() => b.synced, "the new provider to sync", 30000);
    const got = { t: text(b), m: canonical(b.doc.getMap("m")), big: text(b, "big").length };
    expect(JSON.stringify(got) === JSON.stringify(expected), `expected ${JSON.stringify(expected)}, got ${JSON.stringify(got)}`);
    expect(expected.big === BIG, `big text ${expected.big}`);
  });

  if (AUTH) check("i. a party with its own auth hands editors and viewers to a Yjs room", async () => {
    const r = roomName("auth");
    const editor = provider(0, r, { party: "yjs-auth", params: { token: "edit-1" } });
    const viewer = provider(1, r, { party: "yjs-auth", params: { token: "view-1" } });
    await synced(editor);
    await synced(viewer);
    editor.doc.getText("t").insert(0, "by the editor");
    await waitUntil(() => text(viewer) === "by the editor", "the viewer to see the editor's text");
    viewer.doc.getText("t").insert(0, "by the viewer ");
    // The viewer's edit is not applied: a fresh provider sees only the editor's text.
    const fresh = provider(0, r, { party: "yjs-auth", params: { token: "edit-2" } });
    await synced(fresh);
    await sleep(300); // nothing should arrive; give a wrong update time to show up
    expect(text(fresh) === "by the editor", `fresh provider sees ${JSON.stringify(text(fresh))}`);
    expect(text(editor) === "by the editor", `editor sees ${JSON.stringify(text(editor))}`);
    // Without a token the upgrade is refused; the provider keeps retrying and never syncs.
    const anon = provider(1, r, { party: "yjs-auth" });
    await sleep(500);
    expect(!anon.synced && !anon.wsconnected, "a provider without a token connected");
  });
} else if (MODE === "write") {
  check(`write the known document to room ${ARGS[1]}`, async () => {
    const p = provider(0, ARGS[1]);
    await synced(p);
    writeKnown(p.doc);
    // Once the server echoed the 2 MB update back, it is stored (the echo leaves after the write).
    await waitUntil(() => bigFrames(p).length >= 1, "the server to echo the update", 30000);
    p.destroy();
    await closedAll([p]);
  });
} else {
  check(`read the known document from room ${ARGS[1]}`, async () => {
    const p = provider(0, ARGS[1]);
    await waitUntil(() => p.synced, "the provider to sync", 30000);
    checkKnown(p);
  });
}

// ---------------------------------------------------------------- runner

let passed = 0;
let failed = 0;
let finished = false;

async function cleanup() {
  for (const p of providers) {
    try {
      p.destroy();
    } catch {}
  }
  providers = [];
}

async function finish() {
  if (finished) return;
  finished = true;
  await cleanup();
  const deadline = Date.now() + 1000;
  while (Date.now() < deadline && [...allRaw].some((w) => w.readyState !== WS.CLOSED)) await sleep(20);
  for (const w of allRaw) w.terminate();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

process.on("unhandledRejection", (err) => console.log(`warning: unhandled rejection: ${err?.stack ?? err}`));
const watchdog = setTimeout(() => {
  console.log(`FAIL whole run exceeded ${TOTAL_MS} ms`);
  failed += 1;
  finish();
}, TOTAL_MS);

console.log(`y-partykit interop (${MODE}) against ${HOSTS.join(" and ")}`);
for (const { name, fn } of checks) {
  if (finished) break;
  let timer;
  try {
    const detail = await Promise.race([
      fn(),
      new Promise((_, rej) => {
        timer = setTimeout(() => rej(new Error(`check timed out after ${CHECK_MS} ms`)), CHECK_MS);
      }),
    ]);
    passed += 1;
    console.log(`PASS ${name}${detail ? ` (${detail})` : ""}`);
  } catch (err) {
    failed += 1;
    console.log(`FAIL ${name}: ${err?.message ?? err}`);
  } finally {
    clearTimeout(timer);
    await cleanup();
  }
}
if (!finished) {
  clearTimeout(watchdog);
  await finish();
}
