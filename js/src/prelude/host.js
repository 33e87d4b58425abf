// partyline:prelude, part 4 of 4 (host.js): the boundary with the Rust host: host operations a
// handler awaits, the handlers the host dispatches to (their names are `Hook` in
// js/src/bridge.rs), CommonJS `require`, and `globalThis.__partyline`, the entry points the host
// calls (`Api` in js/src/bridge.rs).

// ---------------------------------------------------------------- async host operations

const ops = new Map();
function op(r) {
  // r is [true, value] when the host finished at once, else [false, id].
  if (r[0]) return Promise.resolve(r[1]);
  return new Promise((resolve, reject) => ops.set(r[1], { resolve, reject }));
}
function completeOp(id, ok, value) {
  const p = ops.get(id);
  if (!p) return;
  ops.delete(id);
  if (ok) p.resolve(value);
  else p.reject(typeof value === "string" ? new Error(value) : value);
}

// ---------------------------------------------------------------- dispatch from the host

// The party module's default export (a class, or a PartyKitServer object), the same for every
// room of the realm: set once the module loaded (`load`).
let Party = null;

function errorText(e) {
  if (e instanceof Error) return e.message || String(e);
  return String(e);
}

// The calls the host dispatches, by name: one handler per `Hook` of js/src/bridge.rs (a test there
// checks that the two lists match).
// Each takes the scope of the room (or of the static hooks) it runs for first.
const handlers = {
  // Creates the party instance: the module's default export, a class (or a PartyKitServer object).
  init(s, info) {
    const room = makeRoom(s, info);
    s.room = room;
    if (typeof Party === "function") s.party = new Party(room);
    else if (Party && typeof Party === "object") s.party = legacy(Party, room);
    else throw new TypeError("the party module must export a class as its default export");
    return null;
  },
  start(s) { return s.party.onStart ? s.party.onStart() : null; },
  async tags(s, id, uri, req) {
    const party = s.party;
    const conn = connFor(s, id, uri);
    if (!party.getConnectionTags) return [];
    const tags = await party.getConnectionTags(conn, { request: requestIn(req) });
    return Array.isArray(tags) ? tags.map(String) : [];
  },
  connect(s, id, uri, req) {
    const party = s.party;
    const conn = connFor(s, id, uri);
    return party.onConnect ? party.onConnect(conn, { request: requestIn(req) }) : null;
  },
  async message(s, id, data) {
    const party = s.party;
    const conn = connFor(s, id);
    const message = messageData(data);
    if (party.onMessage) await party.onMessage(message, conn);
    if (listenersOf.has(conn)) {
      conn.dispatchEvent(new MessageEvent("message", { data: message }));
      await Promise.all(conn._lastResults || []);
    }
  },
  async close(s, id) {
    const party = s.party;
    const conn = connFor(s, id);
    conn._open = false;
    try {
      if (party.onClose) await party.onClose(conn);
      if (listenersOf.has(conn)) {
        // The code and reason the party closed it with; else the socket failed (1006) or the
        // client closed it (the client's code does not reach the room: 1005, "no status").
        const code = conn._closeCode === undefined ? 1005 : conn._closeCode;
        const reason = conn._closeReason === undefined ? "" : conn._closeReason;
        conn.dispatchEvent(new CloseEvent("close", { code, reason, wasClean: code !== 1006 }));
        await Promise.all(conn._lastResults || []);
      }
    } finally {
      s.conns.delete(id);
    }
  },
  async error(s, id, message, open) {
    const party = s.party;
    const conn = connFor(s, id);
    const err = new Error(message);
    // An error on a connection that is gone: its socket failed.
    if (open === false && conn._closeCode === undefined) conn._closeCode = 1006;
    if (party.onError) await party.onError(conn, err);
    if (listenersOf.has(conn)) conn.dispatchEvent(new ErrorEvent("error", { error: err, message }));
  },
  async request(s, req) {
    const party = s.party;
    if (!party.onRequest) return { status: 500, headers: [["content-type", "text/plain;charset=UTF-8"]], text: "No onRequest handler", latin1: null };
    return responseOut(await party.onRequest(requestIn(req)));
  },
  alarm(s) { return s.party.onAlarm ? s.party.onAlarm() : null; },

  // Static hooks (the gateway's context).
  hooksInit(s) {
    const has = (n) => !!(Party && typeof Party[n] === "function");
    const opts = Party && (Party.options || (typeof Party === "function" && Party.prototype && Party.prototype.options) || instanceOptions(s, Party));
    return {
      hibernate: !!(opts && opts.hibernate),
      onBeforeConnect: has("onBeforeConnect"),
      onBeforeRequest: has("onBeforeRequest"),
      onFetch: has("onFetch"),
      onSocket: has("onSocket"),
      onCron: has("onCron"),
    };
  },
  beforeConnect(s, req, lobby) { return before(s, Party.onBeforeConnect, req, lobby); },
  beforeRequest(s, req, lobby) { return before(s, Party.onBeforeRequest, req, lobby); },
  async fetch(s, req, lobby) {
    const result = await Party.onFetch.call(Party, requestIn(req), lobbyFor(s, lobby), executionContext());
    if (result === null || result === undefined) return null;
    return responseOut(result);
  },
  // A WebSocket to a URL outside any room (the static `onSocket`): socket `n` is the client's,
  // accepted, with the upgrade request as `socket.request`. Its listeners run after the hook
  // returns, as the client's frames arrive.
  socket(s, n, req, lobby) {
    const request = requestIn(req);
    const socket = new PartySocket(s, n, request.url, true);
    socket.request = request;
    return Party.onSocket.call(Party, socket, lobbyFor(s, lobby), executionContext());
  },
  // A cron schedule is due (the static `onCron`): the controller as a Workers scheduled event
  // has it (`cron`, `scheduledTime`, `noRetry`) with PartyKit's `name`.
  cron(s, c, lobby) {
    const controller = { name: c.name, cron: c.cron, scheduledTime: c.scheduledTime, noRetry() {} };
    return Party.onCron.call(Party, controller, lobbyFor(s, lobby), executionContext());
  },
};

// The options of a party class that declares them as an instance field
// (`options = { hibernate: true }`, PartyKit's documented form), read from a throwaway instance
// made with a room whose APIs are not available here; a constructor that throws (or that uses
// them) leaves the default options, and the timers it set are cleared.
function instanceOptions(s, P) {
  if (typeof P !== "function") return undefined;
  const firstTimer = nextTimer;
  try {
    const instance = new P(makeRoom(s, { id: "", party: "", internalID: "", env: {} }));
    return instance && instance.options;
  } catch (e) {
    console.debug("reading the party's options: its constructor threw without a room:", errorText(e));
    return undefined;
  } finally {
    for (let id = firstTimer; id < nextTimer; id++) clearTimer(id);
  }
}

// `onBeforeConnect` or `onBeforeRequest` (`fn`): a response to send, or the request to go on with.
async function before(s, fn, req, lobby) {
  const input = requestIn(req);
  const result = await fn.call(Party, input, lobbyFor(s, lobby), executionContext());
  if (result instanceof Response) return { respond: responseOut(result) };
  if (result instanceof Request) return { request: requestOut(result) };
  return { request: requestOut(input) };
}

// The status an error answers a request with, as PartyKit does: its `code` when that is an
// HTTP status; undefined (the hook's usual answer) otherwise.
function httpStatus(e) {
  const code = e !== null && typeof e === "object" ? e.code : undefined;
  return typeof code === "number" && Number.isInteger(code) && code >= 200 && code <= 599 ? code : undefined;
}

// Promises rejected with no handler yet; the host collects them once the microtasks ran (a
// handler attached meanwhile takes a promise off).
const unhandled = new Map();

// Calls from the host: results (or errors) are kept on the scope until the host collects them. A
// result that comes while another room's code runs (its promise settled by what that room did)
// tells the room's host, which then collects it.
function settle(s, id, value) {
  if (value && typeof value.then === "function") {
    value.then((v) => { s.results.set(id, [true, v === undefined ? null : v]); s.R.settled(); }, (e) => { s.results.set(id, [false, e]); s.R.settled(); });
  } else {
    s.results.set(id, [true, value === undefined ? null : value]);
  }
}
// The scopes of the realm's engines, by the number the host gave each.
const scopes = new Map();
// The entry points the host calls: one per `Api` of js/src/bridge.rs.
globalThis.__partyline = {
  // Takes the party module's namespace (set by the host as a global) once it loaded.
  load() {
    Party = globalThis.__partyline_module.default;
    delete globalThis.__partyline_module;
  },
  // Scope `n`, for a room (or a static hook call), with its natives `R` (`RoomCall` in
  // js/src/bridge.rs).
  newScope(n, R) {
    scopes.set(n, { R, conns: new Map(), results: new Map(), storageTail: null, party: null, room: null });
  },
  dispatch(n, id, kind, a, b, c) {
    const s = scopes.get(n);
    try {
      settle(s, id, handlers[kind](s, a, b, c));
    } catch (e) {
      s.results.set(id, [false, e]);
    }
  },
  // The result of call `id` of scope `n`: undefined while pending, else [ok, value or error text].
  take(n, id) {
    const s = scopes.get(n);
    const r = s.results.get(id);
    if (r === undefined) return undefined;
    s.results.delete(id);
    if (!r[0]) {
      const e = r[1];
      return [false, errorText(e), e instanceof Error && e.stack ? String(e.stack) : "", httpStatus(e)];
    }
    return r;
  },
  rejection(promise, reason, handled) {
    if (handled) unhandled.delete(promise);
    else unhandled.set(promise, reason);
  },
  rejections() {
    const out = [];
    for (const reason of unhandled.values()) {
      const stack = reason instanceof Error && reason.stack ? "\n" + String(reason.stack).trimEnd() : "";
      out.push(errorText(reason) + stack);
    }
    unhandled.clear();
    return out;
  },
  complete: completeOp,
  timers: fireTimers,
  // Scope `n` is dropped: it goes, and its timers and host operations still pending will never
  // come.
  forget(n, timerIds, opIds) {
    scopes.delete(n);
    for (const id of timerIds) timers.delete(id);
    for (const id of opIds) ops.delete(id);
  },
  // The host cancelled these timers (a call stopped at its time limit set them): their callbacks
  // go, and what they hold with them.
  cancel(timerIds) {
    for (const id of timerIds) timers.delete(id);
  },
};
