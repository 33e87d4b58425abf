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

let party = null;
let Party = null;
let room = null;

function errorText(e) {
  if (e instanceof Error) return e.message || String(e);
  return String(e);
}

// The calls the host dispatches, by name: one handler per `Hook` of js/src/bridge.rs (a test there
// checks that the two lists match).
const handlers = {
  // Creates the party instance: the module's default export, a class (or a PartyKitServer object).
  init(info) {
    Party = globalThis.__partyline_module.default;
    delete globalThis.__partyline_module;
    room = makeRoom(info);
    if (typeof Party === "function") party = new Party(room);
    else if (Party && typeof Party === "object") party = legacy(Party, room);
    else throw new TypeError("the party module must export a class as its default export");
    return null;
  },
  start() { return party.onStart ? party.onStart() : null; },
  async tags(id, uri, req) {
    const conn = connFor(id, uri);
    if (!party.getConnectionTags) return [];
    const tags = await party.getConnectionTags(conn, { request: requestIn(req) });
    return Array.isArray(tags) ? tags.map(String) : [];
  },
  connect(id, uri, req) {
    const conn = connFor(id, uri);
    return party.onConnect ? party.onConnect(conn, { request: requestIn(req) }) : null;
  },
  async message(id, data) {
    const conn = connFor(id);
    const message = messageData(data);
    if (party.onMessage) await party.onMessage(message, conn);
    if (listenersOf.has(conn)) {
      conn.dispatchEvent(new MessageEvent("message", { data: message }));
      await Promise.all(conn._lastResults || []);
    }
  },
  async close(id) {
    const conn = connFor(id);
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
      conns.delete(id);
    }
  },
  async error(id, message, open) {
    const conn = connFor(id);
    const err = new Error(message);
    // An error on a connection that is gone: its socket failed.
    if (open === false && conn._closeCode === undefined) conn._closeCode = 1006;
    if (party.onError) await party.onError(conn, err);
    if (listenersOf.has(conn)) conn.dispatchEvent(new ErrorEvent("error", { error: err, message }));
  },
  async request(req) {
    if (!party.onRequest) return { status: 500, headers: [["content-type", "text/plain;charset=UTF-8"]], text: "No onRequest handler", latin1: null };
    return responseOut(await party.onRequest(requestIn(req)));
  },
  alarm() { return party.onAlarm ? party.onAlarm() : null; },

  // Static hooks (the gateway's context).
  hooksInit() {
    Party = globalThis.__partyline_module.default;
    delete globalThis.__partyline_module;
    const has = (n) => !!(Party && typeof Party[n] === "function");
    const opts = Party && (Party.options || (typeof Party === "function" && Party.prototype && Party.prototype.options) || instanceOptions(Party));
    return {
      hibernate: !!(opts && opts.hibernate),
      onBeforeConnect: has("onBeforeConnect"),
      onBeforeRequest: has("onBeforeRequest"),
      onFetch: has("onFetch"),
      onSocket: has("onSocket"),
      onCron: has("onCron"),
    };
  },
  beforeConnect(req, lobby) { return before(Party.onBeforeConnect, req, lobby); },
  beforeRequest(req, lobby) { return before(Party.onBeforeRequest, req, lobby); },
  async fetch(req, lobby) {
    const result = await Party.onFetch.call(Party, requestIn(req), lobbyFor(lobby), executionContext());
    if (result === null || result === undefined) return null;
    return responseOut(result);
  },
  // A WebSocket to a URL outside any room (the static `onSocket`): socket `n` is the client's,
  // accepted, with the upgrade request as `socket.request`. Its listeners run after the hook
  // returns, as the client's frames arrive.
  socket(n, req, lobby) {
    const request = requestIn(req);
    const socket = new PartySocket(n, request.url, true);
    socket.request = request;
    return Party.onSocket.call(Party, socket, lobbyFor(lobby), executionContext());
  },
  // A cron schedule is due (the static `onCron`): the controller as a Workers scheduled event
  // has it (`cron`, `scheduledTime`, `noRetry`) with PartyKit's `name`.
  cron(c, lobby) {
    const controller = { name: c.name, cron: c.cron, scheduledTime: c.scheduledTime, noRetry() {} };
    return Party.onCron.call(Party, controller, lobbyFor(lobby), executionContext());
  },
};

// The options of a party class that declares them as an instance field
// (`options = { hibernate: true }`, PartyKit's documented form), read from a throwaway instance
// made with a room whose APIs are not available here; a constructor that throws (or that uses
// them) leaves the default options, and the timers it set are cleared.
function instanceOptions(P) {
  if (typeof P !== "function") return undefined;
  const firstTimer = nextTimer;
  try {
    const instance = new P(makeRoom({ id: "", party: "", internalID: "", env: {} }));
    return instance && instance.options;
  } catch (e) {
    console.debug("reading the party's options: its constructor threw without a room:", errorText(e));
    return undefined;
  } finally {
    for (let id = firstTimer; id < nextTimer; id++) clearTimer(id);
  }
}

// `onBeforeConnect` or `onBeforeRequest` (`fn`): a response to send, or the request to go on with.
async function before(fn, req, lobby) {
  const input = requestIn(req);
  const result = await fn.call(Party, input, lobbyFor(lobby), executionContext());
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

// Calls from the host: results (or errors) are kept until the host collects them.
const results = new Map();
function settle(id, value) {
  if (value && typeof value.then === "function") {
    value.then((v) => results.set(id, [true, v === undefined ? null : v]), (e) => results.set(id, [false, e]));
  } else {
    results.set(id, [true, value === undefined ? null : value]);
  }
}
// The entry points the host calls: one per `Api` of js/src/bridge.rs.
globalThis.__partyline = {
  dispatch(id, kind, a, b, c) {
    try {
      settle(id, handlers[kind](a, b, c));
    } catch (e) {
      results.set(id, [false, e]);
    }
  },
  // The result of call `id`: undefined while pending, else [ok, value or error text].
  take(id) {
    const r = results.get(id);
    if (r === undefined) return undefined;
    results.delete(id);
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
};
