// The real clients against a server running this project: partysocket (chat with hooks and
// tags, the hibernating counter) and y-partykit's provider (two documents syncing).
// Usage: node test/clients.mjs HOST:PORT   (prints "N passed, M failed"; exits non-zero on failure)
import PartySocket from "partysocket";
import WebSocket from "ws";
import * as Y from "yjs";
import YProvider from "y-partykit/provider";

const host = process.argv[2] ?? "127.0.0.1:1999";
const room = `t${Date.now()}${Math.floor(Math.random() * 1e6)}`;
let passed = 0, failed = 0;
function check(name, ok, detail = "") {
  if (ok) { passed++; console.log(`ok   ${name}`); }
  else { failed++; console.log(`FAIL ${name} ${detail}`); }
}
function until(pred, ms = 15000) {
  return new Promise((resolve, reject) => {
    const start = Date.now();
    const t = setInterval(() => {
      if (pred()) { clearInterval(t); resolve(); }
      else if (Date.now() - start > ms) { clearInterval(t); reject(new Error("timed out")); }
    }, 10);
  });
}
function socket(opts) {
  const ws = new PartySocket({ host, room, WebSocket, ...opts });
  ws.got = [];
  ws.addEventListener("message", (e) => ws.got.push(JSON.parse(e.data)));
  return ws;
}

try {
  // The hook refuses a wrong token with its own 401 (the socket never opens).
  const refused = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://${host}/parties/main/${room}?token=nope`);
    ws.on("unexpected-response", (_req, res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
    });
    ws.on("open", () => resolve({ status: 101, body: "" }));
    ws.on("error", () => {});
  });
  check("onBeforeConnect refuses a wrong token", refused.status === 401 && refused.body === "Unauthorized", JSON.stringify(refused));

  const alice = socket({ query: { token: "letmein", user: "alice", role: "admin" } });
  const bob = socket({ query: { token: "letmein", user: "bob" } });
  await until(() => alice.got.length && bob.got.length);
  check("history on connect", alice.got[0].type === "history" && Array.isArray(alice.got[0].messages));
  bob.send("hi from bob");
  await until(() => alice.got.some((m) => m.text === "hi from bob") && bob.got.some((m) => m.text === "hi from bob"));
  check("broadcast reaches everyone with the user from onBeforeConnect", alice.got.find((m) => m.text === "hi from bob").from === "bob");
  bob.send("/admins psst");
  await until(() => alice.got.some((m) => m.type === "admin"));
  check("tags: only admins get /admins", !bob.got.some((m) => m.type === "admin") && alice.got.find((m) => m.type === "admin").from === "bob");
  const res = await PartySocket.fetch({ host, room }, { method: "POST", body: "over http", headers: { authorization: "Bearer letmein" } });
  check("POST through onBeforeRequest", res.status === 200 && (await res.json()).ok === true);
  await until(() => alice.got.some((m) => m.text === "over http"));
  const get = await (await PartySocket.fetch({ host, room }, {})).json();
  check("GET sees stored history", get.messages.map((m) => m.text).join("|") === "hi from bob|over http");
  const noauth = await PartySocket.fetch({ host, room }, { method: "POST", body: "x" });
  check("onBeforeRequest throwing answers 401", noauth.status === 401);
  const hello = await (await fetch(`http://${host}/hello`)).json();
  check("onFetch with vars", hello.greeting === "hello from partykit.json");
  const index = await fetch(`http://${host}/`);
  check("serve: static index.html", index.status === 200 && (await index.text()).includes("A PartyKit project"));
  alice.close();
  bob.close();

  // The hibernating counter.
  const c1 = socket({ party: "counter" });
  await until(() => c1.got.length);
  const base = c1.got[0].count;
  c1.send("inc");
  c1.send("inc");
  await until(() => c1.got.some((m) => m.count === base + 2));
  c1.send("state");
  await until(() => c1.got.some((m) => m.state));
  check("counter: storage and connection state", c1.got.find((m) => m.state).state.sent === 2);
  c1.send("alarm 50");
  await until(() => c1.got.some((m) => m.alarm));
  check("counter: alarm", c1.got.find((m) => m.alarm).count === base + 2);
  c1.close();

  // y-partykit: two providers edit one document.
  const docA = new Y.Doc(), docB = new Y.Doc();
  const a = new YProvider(host, room, docA, { party: "yjs", WebSocketPolyfill: WebSocket });
  const b = new YProvider(host, room, docB, { party: "yjs", WebSocketPolyfill: WebSocket });
  await until(() => a.synced && b.synced);
  docA.getText("t").insert(0, "hello ");
  docB.getText("t").insert(0, "yjs ");
  await until(() => docA.getText("t").toString() === docB.getText("t").toString() && docA.getText("t").length === 10);
  check("y-partykit: documents converge", docA.getText("t").toString().length === 10);
  a.awareness.setLocalStateField("user", "a");
  await until(() => [...b.awareness.getStates().values()].some((s) => s.user === "a"));
  check("y-partykit: awareness reaches the other provider", true);
  a.destroy();
  b.destroy();
  // A new provider gets the document from the server (persisted snapshot after everyone left).
  await new Promise((r) => setTimeout(r, 300));
  const docC = new Y.Doc();
  const c = new YProvider(host, room, docC, { party: "yjs", WebSocketPolyfill: WebSocket });
  await until(() => c.synced && docC.getText("t").length === 10);
  check("y-partykit: a later provider loads the document", docC.getText("t").toString() === docA.getText("t").toString());
  c.destroy();
} catch (e) {
  check("no exception", false, e && e.stack);
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
