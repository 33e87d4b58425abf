#!/usr/bin/env node
// Interop checks: the real npm `partysocket` client (on `ws`) against a running
// Partyline dev server. This script does NOT start the server.
//
//   node tests/interop/partysocket.mjs 127.0.0.1:1999
//
// Prints one line per check, then `N passed, N failed`; exits 1 if any check
// failed, 2 on bad usage or missing dependencies. Set INTEROP_DEBUG=1 to get
// partysocket's own debug log.
//
// Bare imports below resolve from this file's directory (tests/interop/node_modules),
// whatever the current working directory is.

import { randomUUID } from "node:crypto";
import { deepStrictEqual } from "node:assert/strict";

let PartySocket, WS;
try {
  ({ default: PartySocket } = await import("partysocket"));
  ({ default: WS } = await import("ws"));
} catch (err) {
  console.error(`cannot load partysocket/ws (${err.message}); run \`npm ci\` in tests/interop first`);
  process.exit(2);
}

const HOST = (process.argv[2] ?? "").replace(/^(https?|wss?):\/\//, "").replace(/\/+$/, "");
if (!/^[^\s/]+:\d+$/.test(HOST)) {
  console.error("usage: node partysocket.mjs <host:port>   (e.g. 127.0.0.1:1999)");
  process.exit(2);
}
// partysocket picks ws:// and http:// only for local-looking hosts (localhost:, 127.0.0.1:,
// 10., 192.168., 172.16-31., [::ffff:7f00:1]:); anything else would get wss:// / https://.
const LOCAL = /^(localhost:|127\.0\.0\.1:|192\.168\.|10\.|172\.(1[6-9]|2\d|3[01])\.|\[::ffff:7f00:1\]:)/.test(HOST);
const HTTP_BASE = `${LOCAL ? "http" : "https"}://${HOST}`;
const WS_BASE = `${LOCAL ? "ws" : "wss"}://${HOST}`;

const WAIT_MS = 3000; // any single wait
const CHECK_MS = 10000; // any single check
const TOTAL_MS = 55000; // the whole run
const SETTLE_MS = 300; // "collect for a while" to catch duplicates / extra frames
const DEBUG = !!process.env.INTEROP_DEBUG;

// ---------------------------------------------------------------- plumbing

// Every underlying `ws` socket partysocket creates (including ones it replaces on
// reconnect), so that cleanup can see and terminate all of them.
const allRaw = new Set();
class TrackedWS extends WS {
  constructor(...args) {
    super(...args);
    allRaw.add(this);
    this.on("error", () => {}); // never crash on a stray socket error
  }
}

// One notifier for all socket events; waitUntil() re-checks its condition on each bump.
let waiters = [];
function bump() {
  const w = waiters;
  waiters = [];
  for (const f of w) f();
}
async function waitUntil(cond, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = cond();
    if (v) return v;
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((res) => {
      const t = setTimeout(res, left);
      waiters.push(() => {
        clearTimeout(t);
        res();
      });
    });
  }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rand = () => randomUUID().slice(0, 8);
const room = (tag) => `interop-${tag}-${rand()}`;
const show = (v) => (typeof v === "string" ? JSON.stringify(v) : String(v));
function expect(cond, msg) {
  if (!cond) throw new Error(msg);
}
function expectEq(actual, expected, what) {
  try {
    deepStrictEqual(actual, expected);
  } catch {
    throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
  }
}
function parseHistory(frame, what) {
  expect(frame.text, `${what}: expected a text frame, got a binary frame`);
  let v;
  try {
    v = JSON.parse(frame.data);
  } catch {
    throw new Error(`${what}: not JSON: ${show(frame.data)}`);
  }
  expect(Array.isArray(v), `${what}: expected a JSON array, got ${show(frame.data)}`);
  return v;
}

let checkSockets = []; // sockets of the running check, closed when it ends

// A PartySocket with recorded events. msgs: [{data, text}], openAt[k] = msgs index at k-th open.
class Client {
  constructor(name, opts) {
    this.name = name;
    this.msgs = [];
    this.openAt = [];
    this.errors = [];
    this.closes = [];
    this.ps = new PartySocket({
      host: HOST,
      party: "main",
      WebSocket: TrackedWS,
      minReconnectionDelay: 100,
      maxReconnectionDelay: 500,
      connectionTimeout: 2000,
      debug: DEBUG,
      ...opts,
    });
    this.ps.addEventListener("open", () => {
      this.openAt.push(this.msgs.length);
      bump();
    });
    this.ps.addEventListener("message", (e) => {
      this.msgs.push({ data: e.data, text: typeof e.data === "string" });
      bump();
    });
    this.ps.addEventListener("error", (e) => {
      this.errors.push(e.message ?? String(e));
      bump();
    });
    this.ps.addEventListener("close", (e) => {
      this.closes.push(e.code);
      bump();
    });
    checkSockets.push(this);
  }
  get opens() {
    return this.openAt.length;
  }
  waitOpen(n = 1) {
    return waitUntil(() => this.opens >= n, `${this.name} to open${n > 1 ? ` (#${n})` : ""}`);
  }
  // The i-th frame received after the n-th open (both 0-based).
  async frameAfterOpen(n, i, what) {
    await this.waitOpen(n + 1);
    const idx = this.openAt[n] + i;
    await waitUntil(() => this.msgs.length > idx, `${this.name}: ${what}`);
    return this.msgs[idx];
  }
  texts() {
    return this.msgs.filter((m) => m.text).map((m) => m.data);
  }
  count(text) {
    return this.msgs.filter((m) => m.text && m.data === text).length;
  }
  waitMsg(text) {
    return waitUntil(() => this.count(text) > 0, `${this.name} to receive ${show(text)}`);
  }
  // Send and wait until it comes back as a broadcast.
  async sendAndEcho(text) {
    const before = this.count(text);
    this.ps.send(text);
    await waitUntil(() => this.count(text) > before, `${this.name} to receive its own ${show(text)} back`);
  }
  close() {
    try {
      this.ps.close();
    } catch {}
  }
}

// Open a client in `main` and consume its history frame; returns [client, history].
async function joined(name, r, opts = {}) {
  const c = new Client(name, { room: r, ...opts });
  const h = parseHistory(await c.frameAfterOpen(0, 0, "history frame"), `${name}'s first frame`);
  return [c, h];
}

// Raw `ws` upgrade expected to be refused: resolves {status, body} or throws.
function rawUpgrade(url) {
  return new Promise((resolve, reject) => {
    const ws = new WS(url);
    allRaw.add(ws);
    const t = setTimeout(() => {
      ws.terminate();
      reject(new Error(`raw upgrade to ${url}: no response within ${WAIT_MS} ms`));
    }, WAIT_MS);
    ws.on("error", () => {});
    ws.on("open", () => {
      clearTimeout(t);
      ws.terminate();
      resolve({ status: 101, body: "" });
    });
    ws.on("unexpected-response", (req, res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => {
        clearTimeout(t);
        resolve({ status: res.statusCode, body });
        req.destroy();
      });
      res.on("error", () => {});
    });
  });
}

// Run an HTTP request (a fetch-like call) and read its body, with a readable error.
async function request(what, doFetch) {
  try {
    const res = await doFetch(AbortSignal.timeout(WAIT_MS));
    return { status: res.status, body: await res.text(), type: res.headers.get("content-type") };
  } catch (err) {
    const why = err?.name === "TimeoutError" ? `no response within ${WAIT_MS} ms` : (err?.cause?.code ?? err?.message ?? err);
    throw new Error(`${what}: ${why}`);
  }
}
const httpGet = (path) => request(`GET ${path}`, (signal) => fetch(`${HTTP_BASE}${path}`, { signal }));

// ---------------------------------------------------------------- checks

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check("a. connect with explicit id: first frame is [], ps.id is the given _pk", async () => {
  const r = room("a");
  const id = `pk-${rand()}`;
  const a = new Client("A", { room: r, id });
  await a.waitOpen();
  expectEq(a.ps.id, id, "ps.id");
  const url = a.ps.url;
  expect(url === `${WS_BASE}/parties/main/${r}?_pk=${id}`, `unexpected socket url ${url}`);
  const h = parseHistory(await a.frameAfterOpen(0, 0, "history frame"), "first frame");
  expectEq(h, [], "first frame");
  await sleep(SETTLE_MS);
  expect(a.msgs.length === 1, `expected exactly one frame on connect, got ${a.msgs.length}: ${a.msgs.map((m) => show(m.data)).join(", ")}`);
  return `url ${url}`;
});

check("b. history: a new client's first frame is the 3 earlier messages in order", async () => {
  const r = room("b");
  const sent = [`m1 ${rand()}`, '{"text":"m2 is \\"JSON\\" in a string"}', "m3 héllo ✓ 🎉"];
  const [a, h0] = await joined("A", r);
  expectEq(h0, [], "A's first frame");
  for (const m of sent) await a.sendAndEcho(m);
  const [, hb] = await joined("B", r);
  expectEq(hb, sent, "B's first frame");
});

check("c. broadcast: A and B each get x1 and y1 exactly once", async () => {
  const r = room("c");
  const [a] = await joined("A", r);
  const [b] = await joined("B", r);
  a.ps.send("x1");
  b.ps.send("y1");
  for (const c of [a, b]) for (const m of ["x1", "y1"]) await c.waitMsg(m);
  await sleep(SETTLE_MS);
  for (const c of [a, b]) {
    const got = c.msgs.slice(1).map((m) => (m.text ? m.data : "<binary frame>"));
    expectEq([...got].sort(), ["x1", "y1"], `${c.name}'s frames after history`);
  }
});

check("d. reconnect(): same _pk, history again, can still send and receive", async () => {
  const r = room("d");
  const [a, h0] = await joined("A", r);
  expectEq(h0, [], "A's first frame");
  await a.sendAndEcho("before");
  const id = a.ps.id;
  const url1 = a.ps.url;
  const t0 = Date.now();
  a.ps.reconnect();
  await a.waitOpen(2);
  const took = Date.now() - t0;
  expectEq(a.ps.id, id, "ps.id after reconnect");
  expect(a.ps.url === url1, `url changed on reconnect: ${url1} -> ${a.ps.url}`);
  const h1 = parseHistory(await a.frameAfterOpen(1, 0, "history frame after reconnect"), "first frame after reconnect");
  expectEq(h1, ["before"], "first frame after reconnect");
  // Give the server time to process the old socket's close, then make sure the new
  // socket (same _pk) is still in the room (a server keyed by _pk would orphan it).
  await sleep(SETTLE_MS);
  const [b, hb] = await joined("B", r);
  expectEq(hb, ["before"], "B's first frame");
  await a.sendAndEcho("after");
  await b.waitMsg("after");
  b.ps.send("from B");
  await a.waitMsg("from B");
  await sleep(SETTLE_MS);
  const after = a.msgs.slice(a.openAt[1] + 1).map((m) => m.data);
  expectEq(after, ["after", "from B"], "A's frames after the reconnect history");
  return `reopened in ${took} ms, _pk ${id}`;
});

check("e. PartySocket.fetch POST appends + broadcasts, GET returns it", async () => {
  const r = room("e");
  const [c] = await joined("C", r);
  const opts = { host: HOST, room: r, party: "main" };
  const post = await request("PartySocket.fetch POST", (signal) =>
    PartySocket.fetch(opts, { method: "POST", body: JSON.stringify("from fetch"), signal }),
  );
  expect(post.status === 200, `POST: expected 200, got ${post.status} ${show(post.body)}`);
  expect(post.body === "OK", `POST: expected body "OK", got ${show(post.body)}`);
  await c.waitMsg("from fetch");
  const get = await request("PartySocket.fetch GET", (signal) => PartySocket.fetch(opts, { method: "GET", signal }));
  expect(get.status === 200, `GET: expected 200, got ${get.status} ${show(get.body)}`);
  let arr;
  try {
    arr = JSON.parse(get.body);
  } catch {
    throw new Error(`GET: body is not JSON: ${show(get.body)}`);
  }
  expectEq(arr, ["from fetch"], "GET body");
  await sleep(SETTLE_MS);
  expect(c.count("from fetch") === 1, `C got "from fetch" ${c.count("from fetch")} times`);
  return `GET content-type ${get.type}`;
});

check("f. a message sent before open is queued and delivered after open", async () => {
  const r = room("f");
  const a = new Client("A", { room: r });
  const immediate = a.ps.send("queued");
  expect(immediate === false, "send() before open returned true (expected false: queued)");
  const h = parseHistory(await a.frameAfterOpen(0, 0, "history frame"), "first frame");
  expectEq(h, [], "first frame (history before the queued message)");
  const second = await a.frameAfterOpen(0, 1, "the queued message back");
  expectEq(second, { data: "queued", text: true }, "second frame");
  const [, hb] = await joined("B", r);
  expectEq(hb, ["queued"], "B's first frame");
});

check("g. unknown party: no open; HTTP and WS get 404 Party nope not found", async () => {
  const r = room("g");
  const n = new Client("nope", { room: r, party: "nope", maxRetries: 1 });
  await waitUntil(() => n.errors.length >= 1, "an error event");
  await sleep(1000); // one retry after ~100 ms
  expect(n.opens === 0, "PartySocket to party nope opened");
  n.close();
  const get = await httpGet(`/parties/nope/${r}`);
  expect(get.status === 404, `GET: expected 404, got ${get.status} ${show(get.body)}`);
  expect(get.body === "Party nope not found", `GET: expected body "Party nope not found", got ${show(get.body)}`);
  const up = await rawUpgrade(`${WS_BASE}/parties/nope/${r}?_pk=raw`);
  expect(up.status === 404, `WS upgrade: expected 404, got ${up.status} ${show(up.body)}`);
  return `${n.errors.length} error event(s), 0 opens`;
});

check("h. private party: token opens with 'welcome, alice'; no token gets 401", async () => {
  const r = room("h");
  const p = new Client("alice", { room: r, party: "private", query: { token: "alice" }, maxRetries: 2 });
  await p.waitOpen();
  expect(p.ps.url.includes(`?_pk=${p.ps.id}&token=alice`), `unexpected socket url ${p.ps.url}`);
  const first = await p.frameAfterOpen(0, 0, "welcome frame");
  expectEq(first, { data: "welcome, alice", text: true }, "first frame");
  const up = await rawUpgrade(`${WS_BASE}/parties/private/${r}?_pk=raw`);
  expect(up.status === 401, `WS upgrade without token: expected 401, got ${up.status} ${show(up.body)}`);
  return `401 body ${show(up.body)}`;
});

// ---------------------------------------------------------------- runner

let passed = 0;
let failed = 0;
let finished = false;

async function cleanup() {
  for (const c of checkSockets) c.close();
  checkSockets = [];
}

async function finish() {
  if (finished) return;
  finished = true;
  await cleanup();
  // Give the server a moment to answer our Close frames, then drop whatever is left.
  const deadline = Date.now() + 1000;
  while (Date.now() < deadline && [...allRaw].some((w) => w.readyState !== WS.CLOSED)) await sleep(50);
  const lingering = [...allRaw].filter((w) => w.readyState === WS.CLOSING).length;
  if (lingering) console.log(`note: ${lingering} socket(s) got no Close reply within 1 s of close()`);
  for (const w of allRaw) w.terminate();
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

process.on("unhandledRejection", (err) => {
  console.log(`warning: unhandled rejection: ${err?.stack ?? err}`);
});

const watchdog = setTimeout(() => {
  console.log(`FAIL whole run exceeded ${TOTAL_MS} ms`);
  failed += 1;
  finish();
}, TOTAL_MS);

console.log(`partysocket interop against ${HOST}`);
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
